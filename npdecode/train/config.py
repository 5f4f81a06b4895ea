"""Training settings: one frozen pydantic model read from YAML (``configs/train-*.yml``), strict keys.

Sections: ``data`` (which examples), ``model`` (variant and the levers that make steps cheap),
``optim`` (optimizer and schedule), ``trainer`` (Lightning placement and budget), ``validation``
and ``index`` (the :class:`~npdecode.index.config.IndexConfig` of the run's index). Every field
has a default, so ``backbone:`` and ``data.dataset`` are all a minimal config needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from npdecode.config import read_mapping, validated
from npdecode.errors import NpdecodeError
from npdecode.index.config import IndexConfig

PSEUDO_KINDS = ("sentence", "span", "lead")


class _Strict(BaseModel):
    # a docstring under a field is its description: docs/config-train.md is generated from them
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class PseudoQueries(_Strict):
    """Pseudo-queries drawn from each document's text (seeded): ``sentence`` = one sentence,
    ``span`` = a window of ``span_words`` words, ``lead`` = the first ``span_words`` words."""

    kinds: tuple[Literal["sentence", "span", "lead"], ...] = ("sentence",)
    """Which kinds to draw (sentence, span, lead), in turn."""
    per_document: int = Field(2, ge=0)
    """Pseudo-queries per document and epoch (0: none)."""
    span_words: int = Field(24, ge=2)
    """Words of a ``span`` or ``lead`` pseudo-query."""


class DataConfig(_Strict):
    """Which training examples a run makes from its dataset."""

    dataset: str | None = None
    """A dataset of the registry (beir/<name>, nq, nq320k) or a BEIR-layout folder; its corpus is
    indexed and its training qrels (positive grades) give (query -> identifier) examples."""
    data_dir: str | None = None
    """Where local copies of registry datasets live (as ``npdecode eval --data-dir``)."""
    train_split: Literal["train", "dev", "test"] = "train"
    """The qrels split whose queries train."""
    index_examples: bool = True
    """DSI indexing examples: document text -> identifier, one per document (every document, with
    or without training queries, gets one)."""
    index_input: Literal["text", "title_text"] = "text"
    """What an indexing example reads: the text alone (DSI) or "title text"."""
    pseudo_queries: PseudoQueries = PseudoQueries()
    """Pseudo-queries drawn from the documents (section ``data.pseudo_queries``)."""
    query_repeat: int = Field(1, ge=0)
    """Each training query appears this many times per epoch (real queries are few and precious)."""
    max_input_length: int = Field(64, ge=4)
    """Encoder inputs are cut to this many tokens (queries are short; documents are cut)."""
    batch_size: int = Field(32, ge=1)
    """Examples per training batch (per device)."""
    length_buckets: int = Field(50, ge=0)
    """Batches of identifiers of similar length (0/1: off): each run of this many batches is drawn
    at random, sorted by target length and cut; the batches are shuffled. A plain random batch is
    about half padding, which every decoder layer pays for."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes (0: load in the training process)."""


class ModelConfig(_Strict):
    """The variant and the levers that make a step cheap."""

    variant: Literal["np", "vanilla"] = "np"
    """vanilla: GENRE-style over the backbone's vocabulary; np: Np Decoding over the CE table."""
    ce_encoder: Literal["base", "async", "contrastive"] = "base"
    """Which encoder makes the CE: base = the backbone's as it is; async = rebuilt from the model's
    own encoder while it trains (every async_every_n_epochs); contrastive = the ``contrastive``
    stage trains the query side against the base CE first, CE is re-extracted with that encoder
    and GR training starts from the stage's weights."""
    async_every_n_epochs: int = Field(1, ge=1)
    """ce_encoder async: rebuild the CE table after every this many epochs."""
    async_cache_gib: float = Field(4.0, ge=0)
    """With train_encoder_layers, the rebuild keeps the corpus's states below the trained layers
    (computed once) and runs only the trained layers on them: at most this many GiB (0: none)."""
    train_ce: bool = False
    """Train the CE table too (an ablation; the paper keeps it frozen)."""
    freeze_encoder: bool = False
    """Keep the encoder's weights as they are."""
    cache_encoder_states: bool = True
    """With freeze_encoder (or train_encoder_layers), compute the frozen encoder's outputs (or the
    states entering the trained layers) once per example and reuse them every epoch."""
    train_encoder_layers: int | None = Field(None, ge=1)
    """With freeze_encoder false: train only the top N encoder layers (None: all). The embeddings
    and the layers below stay as they are (eval mode: no dropout), so the backward pass stops at
    layer L-N; with cache_encoder_states only the top N layers run."""
    decoder_layers: int | None = Field(None, ge=1)
    """Keep only the first N decoder layers (None: all): a shallower decoder is a cheaper step."""
    sampled_negatives: int | None = Field(None, ge=0)
    """Training softmax over the whole CE table (None), or over the batch's gold rows, every row of
    their tokens and this many random rows: a cheaper step where the CE table is large."""
    logit_scale: float = Field(1.0, gt=0)
    """logits = scale * h . CE^T; ~0.1 puts the first loss of a MiniLM bert2bert near ln V_ce."""
    learn_scale: bool = False
    """Learn logit_scale (at its own rate, optim.scale_lr); saved in the checkpoint."""
    token_embeddings: bool = False
    """Add a trainable embedding per token to the CE rows of that token (zeros at first): the
    decoder reads and scores CE[r] + E[token(r)]. CE stays frozen; appended rows get E too."""
    memory_weight: float = Field(0.0, ge=0)
    """Search default saved with the checkpoint: weight of the CE memory's lookahead (hypotheses
    rank by their length-normalised score + weight x the best cosine between the query's mean
    encoder state and a reachable document's mean CE row). 0 is plain Np decoding; it is what lets
    documents the decoder never saw be found."""


class ContrastiveConfig(_Strict):
    """Stage 1 of ``ce_encoder: contrastive``: the first decoder state of an example is pulled to
    the CE rows of its gold identifier's tokens (token level, softmax over the candidates)."""

    negatives: Literal["all_ce", "in_batch"] = "all_ce"
    """Candidates of the softmax: every CE row (all_ce) or the gold rows of the batch (in_batch)."""
    positives: Literal["identifier", "first"] = "identifier"
    """Positives: the CE rows of every token of the gold identifier, or of its first token only."""
    scale: float = Field(0.1, gt=0)
    """similarity = scale * h . ce (as model.logit_scale)."""
    optimizer: Literal["adafactor", "adamw"] = "adamw"
    """The stage's optimizer."""
    lr: float = Field(5e-5, gt=0)
    """The stage's learning rate."""
    warmup_steps: int = Field(50, ge=0)
    """Linear warm-up steps of the stage."""
    batch_size: int = Field(64, ge=1)
    """Examples per batch of the stage."""
    max_epochs: int | None = Field(1, ge=1)
    """Epoch budget of the stage (None: no limit)."""
    max_steps: int = Field(-1, ge=-1)
    """Step budget of the stage (-1: no limit)."""
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock budget of the stage in minutes (None: no limit)."""


class OptimConfig(_Strict):
    """Optimizer and learning-rate schedule."""

    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    """Adafactor (the paper's) or AdamW."""
    lr: float = Field(1e-4, gt=0)
    """Learning rate (1e-4: the paper's Adafactor rate)."""
    scale_lr: float = Field(1e-2, gt=0)
    """Learned logit scale: its own rate (at the model's rate it barely moves)."""
    encoder_lr: float | None = Field(None, gt=0)
    """The encoder's own rate when it trains (None: lr); a pretrained encoder wants a lower one."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay."""
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    """After warm-up: constant, or decay to 0 at the last step, or at the end of
    trainer.max_minutes if that comes first."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this (None: no clipping)."""
    accumulate: int = Field(1, ge=1)
    """Accumulate gradients over this many batches per optimizer step."""


class TrainerConfig(_Strict):
    """Lightning placement and the budget."""

    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: int = Field(1, ge=1)
    """Devices per node."""
    num_nodes: int = Field(1, ge=1)
    """Nodes (each runs the command itself)."""
    strategy: str = "auto"
    """Lightning strategy (several devices on one node: ddp_spawn; across nodes: ddp)."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto: bf16-mixed on a CUDA device with bf16, 32-true elsewhere."""
    max_epochs: int | None = Field(None, ge=1)
    """Epoch budget (None: no limit; at least one budget must be set)."""
    max_steps: int = Field(-1, ge=-1)
    """Step budget (-1: no limit)."""
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock budget of the fit loop in minutes (None: no limit); the run stops cleanly."""
    seed: int = 0
    """Seed of every random choice of the run (examples, batches, initialisation, dropout)."""
    threads: int | None = Field(None, ge=1)
    """CPU threads of torch (None: torch's default)."""
    progress: bool = True
    """Show progress bars."""
    log_every_n_steps: int = Field(10, ge=1)
    """Write the CSV and TensorBoard logs every this many steps."""
    fast_dev_run: bool = False
    """Lightning's smoke test: one training and one validation batch, no checkpoints or logs."""

    @model_validator(mode="after")
    def _some_limit(self) -> TrainerConfig:
        if self.max_epochs is None and self.max_steps < 0 and self.max_minutes is None and not self.fast_dev_run:
            raise ValueError("set at least one of max_epochs, max_steps, max_minutes")
        return self


class ValidationConfig(_Strict):
    """Validation by decoding, and zero-shot scores at the end of a run."""

    queries: int = Field(64, ge=0)
    """Training queries held out for validation (decoded with the real constrained decoder);
    without training queries, this many indexing examples are decoded instead (memorisation)."""
    every_n_epochs: int = Field(1, ge=1)
    """Validate after every this many epochs."""
    beam: int = Field(10, ge=1)
    """Beam size of validation decoding."""
    metric: Literal["ndcg_cut_10", "success_1", "Rprec"] = "ndcg_cut_10"
    """The metric that picks the best epoch (the checkpoint)."""
    patience: int | None = Field(None, ge=1)
    """Stop after this many validations without improvement (None: never stop early)."""
    eval_datasets: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    """Scored zero-shot when the run ends (registry names or BEIR folders, found with
    data.data_dir): each corpus is indexed with the checkpoint's encoder into RUN/zero_shot/ and the
    metrics go into the run manifest (metrics.zero_shot)."""
    eval_retrievers: tuple[Annotated[str, Field(min_length=1)], ...] | None = Field(None, min_length=1)
    """The retrievers scored on eval_datasets (None: np, or genre for the vanilla variant)."""
    eval_split: Literal["train", "dev", "test"] = "test"
    """The split of eval_datasets that is scored."""

    @model_validator(mode="after")
    def _distinct(self) -> ValidationConfig:
        for key in ("eval_datasets", "eval_retrievers"):
            names = getattr(self, key) or ()
            if len(set(names)) != len(names):
                raise ValueError(f"{key} names one twice: {', '.join(names)}")
        return self


class TrainConfig(_Strict):
    """A training run (``npdecode train CONFIG --out RUN_DIR``).

    ``backbone``: a hub id, a local HF checkpoint dir (e.g. from ``npdecode merge``), a merge
    recipe (``.yml``, merged into RUN_DIR/backbone first) or ``minilm-bert2bert`` (bert2bert
    warm-started from the packaged all-MiniLM-L6-v2, made offline into RUN_DIR/backbone).
    """

    backbone: str = "minilm-bert2bert"
    """Hub id, local HF checkpoint dir, merge recipe (.yml) or minilm-bert2bert."""
    data: DataConfig = DataConfig()
    """Which examples (section ``data``)."""
    model: ModelConfig = ModelConfig()
    """The variant and its levers (section ``model``)."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and schedule (section ``optim``)."""
    trainer: TrainerConfig = TrainerConfig(max_epochs=10)
    """Lightning placement and budget (section ``trainer``; default max_epochs 10)."""
    validation: ValidationConfig = ValidationConfig()
    """Validation and zero-shot scoring (section ``validation``)."""
    index: IndexConfig = IndexConfig()
    """The run's index (section ``index``: the keys of an index config, docs/config-index.md)."""
    contrastive: ContrastiveConfig = ContrastiveConfig()
    """Stage 1 of ce_encoder contrastive (section ``contrastive``)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        m = self.model
        if m.variant == "vanilla" and (
            m.train_ce
            or m.learn_scale
            or m.token_embeddings
            or m.ce_encoder != "base"
            or m.sampled_negatives is not None
        ):
            raise ValueError(
                "model.train_ce, learn_scale, token_embeddings, ce_encoder and sampled_negatives apply to the np "
                "variant only"
            )
        if m.freeze_encoder and m.train_encoder_layers is not None:
            raise ValueError("model.train_encoder_layers trains part of the encoder: set model.freeze_encoder to false")
        if m.ce_encoder == "async" and (m.freeze_encoder or m.train_ce):
            raise ValueError(
                "ce_encoder async rebuilds CE from the encoder being trained: set "
                "model.freeze_encoder and model.train_ce to false"
            )
        if m.ce_encoder == "async" and self.index.raw_ce:
            raise ValueError(
                "ce_encoder async: index.raw_ce is not kept (the table changes while training); "
                "index the trained checkpoint with raw_ce instead"
            )
        if not self.data.index_examples and self.data.query_repeat == 0 and not self.data.pseudo_queries.per_document:
            raise ValueError("no training examples: enable data.index_examples, queries or pseudo_queries")
        return self


def _set_key(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise NpdecodeError(f"--set {dotted}: {key} is not a section")
        node = child
    node[last] = value


def load_train_config(path: str | Path | None, sets: tuple[str, ...] = (), **overrides: Any) -> TrainConfig:
    """Read ``path`` (YAML), apply ``--set key.sub=value`` items (values parsed as YAML) and
    dotted ``overrides`` that are not None; validation errors are one line naming the file."""
    data = read_mapping(path, "training config")
    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise NpdecodeError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=3e-4")
        _set_key(data, key.strip(), yaml.safe_load(raw))
    for key, value in overrides.items():
        if value is not None:
            _set_key(data, key, value)
    return validated(TrainConfig, data, path or "training options", "training config")
