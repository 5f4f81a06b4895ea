"""Zero-shot evaluation of a generative checkpoint: the index of each dataset's corpus is built
with the checkpoint's encoder (or reused from the cache), then every retriever is evaluated.

``npdecode eval --dataset A --dataset B --retriever np --gr-model RUN/checkpoint`` and the
``validation.eval_datasets`` of ``npdecode train`` both come through :func:`evaluate_datasets`.

Cache: ``CACHE/gr-index/<key>/`` (an index dir), key = sha256 of the checkpoint's files, its
path, the corpus bytes, the index config (placement aside, precision resolved) and the index
format. A changed checkpoint, corpus or config gets a new key, hence a new build; an index
dir under its key is complete (build_index renames it into place when done).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from npdecode.errors import NpdecodeError
from npdecode.eval.datasets import Dataset
from npdecode.eval.experiment import Experiment, run_experiment
from npdecode.index.config import PLACEMENT_KEYS, IndexConfig
from npdecode.search.options import SearchOptions

# retrievers that decode over an index dir (the others index the corpus themselves)
GENERATIVE = ("np", "genre")
INDEX_DIR = "gr-index"


def checkpoint_index_config(checkpoint: str | Path) -> IndexConfig:
    """The index config of the training run a checkpoint comes from (``RUN/index/manifest.json``,
    when that index names this checkpoint), else the default :class:`IndexConfig`."""
    from npdecode.config import validated
    from npdecode.index.manifest import MANIFEST, read_manifest

    checkpoint = Path(checkpoint).resolve()
    run_index = checkpoint.parent / "index"
    if not (run_index / MANIFEST).is_file():
        return IndexConfig()
    manifest = read_manifest(run_index)
    named = manifest.model.checkpoint
    if not named or (run_index / named).resolve() != checkpoint:
        return IndexConfig()  # an index beside it, but of another model
    return validated(IndexConfig, dict(manifest.config), run_index / MANIFEST, "index config")


def placed(config: IndexConfig, device: str) -> IndexConfig:
    """``config`` encoding on one device of the kind ``device`` names (auto, cpu, cuda[:n]):
    an evaluation is one process, whatever devices the training run was spread over."""
    accelerator = "cpu" if device == "cpu" else "gpu" if device.startswith("cuda") else "auto"
    return config.model_copy(update={"accelerator": accelerator, "devices": 1, "num_nodes": 1, "strategy": "auto"})


def index_key(checkpoint: str | Path, corpus_path: str | Path, config: IndexConfig) -> str:
    """The cache key of the index of ``corpus_path`` built with ``checkpoint`` under ``config``."""
    from npdecode.corpus import corpus_digest
    from npdecode.index.builder import resolve_precision
    from npdecode.index.manifest import FORMAT, config_digest, model_digest

    digest = model_digest(checkpoint)
    if digest is None:
        raise NpdecodeError(
            f"--gr-model {checkpoint}: not a local checkpoint directory; building an index needs one "
            "(or pass --index INDEX_DIR)"
        )
    content = config.model_dump(exclude=set(PLACEMENT_KEYS))
    content["precision"] = resolve_precision(config)  # "auto" is bf16 on some machines, fp32 on others
    parts = {
        "format": FORMAT,
        "model": digest,
        # the manifest names the checkpoint by path and the np retriever matches it by path: a
        # copy elsewhere gets its own index
        "model_path": str(Path(checkpoint).resolve()),
        "corpus": corpus_digest(corpus_path),
        "config": config_digest(content),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def gr_index(
    corpus_path: str | Path,
    checkpoint: str | Path,
    cache_dir: str | Path,
    *,
    config: IndexConfig | None = None,
    device: str = "auto",
    label: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """The index dir of ``corpus_path`` built with ``checkpoint``'s encoder under
    ``cache_dir/gr-index/<key>``: reused when there, built (atomically) otherwise.
    ``config`` defaults to the checkpoint's run's (:func:`checkpoint_index_config`); one line
    goes to ``say``: ``index of LABEL: built in X s -> PATH`` or ``index of LABEL: reused PATH``."""
    from npdecode.index.builder import build_index
    from npdecode.index.manifest import MANIFEST

    config = placed(config or checkpoint_index_config(checkpoint), device)
    out = Path(cache_dir) / INDEX_DIR / index_key(checkpoint, corpus_path, config)
    label = label or str(corpus_path)
    if (out / MANIFEST).is_file():
        say(f"index of {label}: reused {out}")
        return out
    if out.exists():  # not an index build_index left (it renames a complete one into place)
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build_index(corpus_path, str(Path(checkpoint).resolve()), out, config)
    say(f"index of {label}: built in {time.perf_counter() - start:.1f} s -> {out}")
    return out


def needs_gr_index(retrievers: Sequence[str], options: SearchOptions) -> bool:
    """Whether ``retrievers`` decode over an index that has to come from ``--gr-model``."""
    return options.index is None and options.gr_model is not None and any(r in GENERATIVE for r in retrievers)


def evaluate_datasets(
    datasets: Sequence[Dataset],
    retrievers: Sequence[str],
    options: SearchOptions | Mapping[str, Any],
    *,
    k: int = 1000,
    cache_dir: str | Path | None = None,
    ignore_identical_ids: bool | None = None,
    labels: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    on_experiment: Callable[[Experiment], None] | None = None,
) -> list[Experiment]:
    """One experiment per dataset. With ``options.gr_model`` and no ``options.index``, the
    generative retrievers decode over the index of each dataset's corpus built with that
    checkpoint (:func:`gr_index` under ``cache_dir``, default ``options.cache_dir`` or the
    package cache). ``on_experiment`` sees each experiment as soon as it is done."""
    from npdecode.cache import cache_root

    log = progress or (lambda msg: None)
    options = SearchOptions.of(options)
    build = needs_gr_index(retrievers, options)
    if options.index is not None and len(datasets) > 1 and any(r in GENERATIVE for r in retrievers):
        raise NpdecodeError(
            "--index with several datasets: one index holds one corpus; leave --index out and pass "
            "--gr-model CHECKPOINT to index each dataset's corpus with it"
        )
    root = cache_root(cache_dir if cache_dir is not None else options.cache_dir)
    experiments = []
    for ds in datasets:
        opts = options
        if build:
            label = (labels or {}).get(ds.name, ds.name)
            index = gr_index(ds.corpus_path, options.gr_model, root, device=options.device, label=label, say=log)
            opts = SearchOptions.of(options, index=index)
        experiment = run_experiment(
            ds, retrievers, opts, k=k, ignore_identical_ids=ignore_identical_ids, progress=progress
        )
        if on_experiment is not None:
            on_experiment(experiment)
        experiments.append(experiment)
    return experiments


# Documents retrieved per query when a training run scores its eval datasets: enough for
# nDCG@10 and Recall@100, without widening the np beam to 1,000 documents (~10x the decoding).
ZERO_SHOT_K = 100


def load_datasets(names: Sequence[str], split: str = "test", data_dir: str | Path | None = None) -> list[Dataset]:
    """Each named dataset's ``split`` (a bad name or a missing local copy fails here, one line)."""
    from npdecode.eval.datasets import load_dataset

    if len(set(names)) != len(names):
        raise NpdecodeError(f"dataset given twice: {', '.join(names)}")
    return [load_dataset(name, split=split, data_dir=data_dir) for name in names]


def check_retrievers(retrievers: Sequence[str], what: str = "retriever") -> None:
    """Unknown or repeated retriever names are one-line errors (``what``: how the caller's
    user names them, e.g. ``--retriever``)."""
    from npdecode.search.registry import get_factory

    if len(set(retrievers)) != len(retrievers):
        raise NpdecodeError(f"{what} given twice: {', '.join(retrievers)}")
    for name in retrievers:
        get_factory(name)


def zero_shot_scores(
    checkpoint: str | Path,
    datasets: Sequence[Dataset],
    retrievers: Sequence[str],
    *,
    cache_dir: str | Path,
    options: SearchOptions | Mapping[str, Any] | None = None,
    k: int = ZERO_SHOT_K,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {retriever: mean metrics}}`` of ``checkpoint`` over each dataset, its
    indexes built under ``cache_dir`` (:func:`evaluate_datasets`); metrics with a cutoff above
    ``k`` are left out (the run stops at ``k`` documents)."""
    options = SearchOptions.of(options, gr_model=str(Path(checkpoint).resolve()))
    experiments = evaluate_datasets(datasets, retrievers, options, k=k, cache_dir=cache_dir, progress=say)
    return {e.dataset.name: {r.name: _within(r.evaluation.mean, k) for r in e.results} for e in experiments}


def _within(metrics: Mapping[str, float], k: int) -> dict[str, float]:
    def cutoff(name: str) -> int:
        tail = name.rpartition("_")[2]
        return int(tail) if tail.isdigit() else 0

    return {m: v for m, v in metrics.items() if cutoff(m) <= k}
