"""The pieces a training run is made of, shared by both stages of ``ce_encoder: contrastive``:
the run's index, the network over it, its decoder targets and its examples."""

from __future__ import annotations

from pathlib import Path

from npdecode.errors import NpdecodeError
from npdecode.train.config import TrainConfig


def run_index(corpus_path: Path, backbone_ref: str, index_dir: Path, config: TrainConfig, say, rebuilder=None):
    """The run's index: built from the backbone (resumable), reused when it is already there.
    Given an async run's ``(rebuilder, backbone)`` (one whose encoder's top layers train), it is
    built with them instead (in memory, the same index), which keeps the corpus's states below
    those layers on the way."""
    from npdecode.corpus import corpus_digest
    from npdecode.index.builder import build_index
    from npdecode.index.layout import load_index
    from npdecode.index.manifest import model_digest

    if not (index_dir / "manifest.json").is_file():
        say(f"indexing {corpus_path} with {backbone_ref}")
        if rebuilder is not None:
            rebuilder, backbone = rebuilder
            rebuilder.build_index(backbone, index_dir, backbone_ref, model_digest(backbone_ref))
        else:
            build_index(corpus_path, backbone_ref, index_dir, config.index)
    index = load_index(index_dir)
    if corpus_digest(corpus_path) not in {c.digest for c in index.manifest.corpus}:
        raise NpdecodeError(f"{index_dir} was built from another corpus; remove it or start a new run dir")
    return index


def build_model(config: TrainConfig, backbone_ref: str, index):
    """The network to train: Np over the index's CE table, or vanilla over the vocabulary."""
    import torch

    from npdecode.backbone import load_backbone
    from npdecode.model import NpModel, VanillaModel

    backbone = load_backbone(backbone_ref)
    if config.model.decoder_layers is not None:
        backbone.keep_decoder_layers(config.model.decoder_layers)
    if config.model.variant == "vanilla":
        return VanillaModel(backbone)
    return NpModel(
        backbone,
        torch.from_numpy(index.vectors),
        torch.from_numpy(index.token_ids),
        start_ce_id=index.bos_ce,
        eos_ce_id=index.eos_ce,
        logit_scale=config.model.logit_scale,
        learn_scale=config.model.learn_scale,
        trainable_ce=config.model.train_ce,
        token_embeddings=config.model.token_embeddings,
        memory_weight=config.model.memory_weight,
    )


def targets_of(index, variant: str) -> list[list[int]]:
    """Each identifier group's decoder target: CE ids + EOS row (np) or tokens + EOS (vanilla)."""
    mode = "token" if variant == "vanilla" else "ce"
    return [g.target(mode, index.eos_ce, index.eos_token) for g in index.groups]


def make_examples(config: TrainConfig, out: Path, model, data, corpus, index, say):
    """Training examples (validation queries held out), the validation set and the tokenized
    inputs (cached in ``out/cache``)."""
    from npdecode.train.examples import build_examples, doc_groups, tokenize_examples

    group_of = doc_groups(index.members)
    examples, validation = build_examples(
        corpus,
        group_of,
        data.queries,
        data.qrels,
        config.data,
        n_validation=config.validation.queries,
        seed=config.trainer.seed,
    )
    if not examples.texts:
        raise NpdecodeError(f"{data.corpus_path}: no training examples could be made (empty texts?)")
    (out / "cache").mkdir(exist_ok=True)
    tokens = tokenize_examples(
        model.backbone.tokenizer,
        examples.texts,
        model.backbone.fit_length(config.data.max_input_length),
        out / "cache" / "examples.npz",
    )
    say(f"examples: {examples.counts()}; validation: {len(validation.queries)} {validation.kind}")
    return examples, validation, tokens
