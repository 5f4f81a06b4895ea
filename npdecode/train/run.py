"""``npdecode train CONFIG --out RUN_DIR``: backbone -> index -> examples -> Lightning fit -> checkpoint.

The run dir::

    RUN_DIR/
      config.yml        the resolved config (a resume must use the same)
      backbone/         only when the backbone was merged from a recipe or made from MiniLM
      contrastive/      ce_encoder contrastive only: stage 1 (base-index/, lightning/, logs/ and
                        backbone/, the stage-1 weights stage 2 starts from)
      index/            the index of the run: built from the backbone (base), from the stage-1
                        backbone (contrastive), or the table last rebuilt while training (async);
                        its manifest names ../checkpoint, so `npdecode search RUN_DIR/index` decodes
                        with the trained model
      cache/            tokenized examples
      lightning/        last.ckpt (resume) and best.ckpt (selection on the validation metric)
      logs/             csv/metrics.csv and tensorboard/ event files (a resume continues them:
                        npdecode.train.logs)
      checkpoint/       the trained model: HF format + npdecode.json (+ the CE table for np)
      zero_shot/        validation.eval_datasets only: gr-index/<key>/, each corpus indexed with
                        the checkpoint (scores in the manifest's metrics.zero_shot)
      manifest.json     config, digests, example counts, metrics, versions (written last); its
                        training steps, seconds and examples count every segment of the run (the
                        first and each resume, listed: npdecode.train.segments)

Every input is checked before anything is written, so a user mistake leaves no run dir. A run
dir without ``manifest.json`` is unfinished: ``--resume`` continues it from ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from npdecode.errors import NpdecodeError
from npdecode.train.components import build_model, make_examples, run_index, targets_of
from npdecode.train.config import TrainConfig

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def train_run(config: TrainConfig, out: str | Path, *, resume: bool = False, say=None) -> dict[str, Any]:
    """Run the whole training job into ``out``; returns the run manifest. The process keeps
    float denormals flushed to zero afterwards (:func:`npdecode.device.flush_denormals`)."""
    say = say or log.info
    out = Path(out)
    _check_out(out, config, resume)
    from npdecode.backbone import load_backbone
    from npdecode.corpus import load_corpus
    from npdecode.device import flush_denormals
    from npdecode.train.sources import load_training_data

    flush_denormals()  # before any parallel op, so torch's intra-op threads inherit it

    data = load_training_data(config.data.dataset, config.data.data_dir, config.data.train_split)
    corpus = load_corpus(data.corpus_path)  # a malformed or empty corpus fails here, before any write
    _zero_shot_plan(config)  # so does an unknown eval dataset or retriever
    if not data.queries:
        say(f"{data.notes[0] if data.notes else 'no training queries'}")
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        backbone_ref = _backbone(config, out)
        load_backbone(backbone_ref)  # a missing or unsupported model fails before the index is built
    except NpdecodeError:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    (out / "config.yml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if config.model.ce_encoder == "contrastive":  # stage 1; CE and stage 2 come from its weights
        from npdecode.train.contrastive import run_stage

        backbone_ref = run_stage(config, out, backbone_ref, data, corpus, resume=resume, say=say)
    rebuilder, index_dir = None, out / "index"
    device = _one_device(config)
    if _keeps_states(config) and device is not None and not (index_dir / "manifest.json").is_file():
        # a one-device async run indexes with its rebuilder: the kept states come for free
        from npdecode.backbone import load_backbone

        backbone = load_backbone(backbone_ref, device=device)
        rebuilder = _rebuilder(config, data.corpus_path, backbone)
        index = run_index(data.corpus_path, backbone_ref, index_dir, config, say, (rebuilder, backbone))
        del backbone  # training loads its own
    else:
        index = run_index(data.corpus_path, backbone_ref, index_dir, config, say)
    return _fit_and_save(config, out, backbone_ref, data, corpus, index, rebuilder, resume=resume, say=say)


def _keeps_states(config: TrainConfig) -> bool:
    """An async run whose encoder's bottom layers stay frozen (their states can be kept)."""
    return config.model.ce_encoder == "async" and config.model.train_encoder_layers is not None


def _one_device(config: TrainConfig) -> str | None:
    """The device a one-process run trains on (cpu or cuda), or None (several processes, others)."""
    from npdecode.device import resolve_device

    t = config.trainer
    if t.devices * t.num_nodes != 1 or t.accelerator not in {"cpu", "auto", "gpu", "cuda"}:
        return None
    return "cpu" if t.accelerator == "cpu" else resolve_device("auto")


def _rebuilder(config: TrainConfig, corpus_path: Path, backbone):
    """The async run's CE rebuilder (keeping the corpus's states below the trained encoder layers)."""
    from npdecode.index.builder import CERebuilder
    from npdecode.train.module import first_trained_layer

    top = config.model.train_encoder_layers
    return CERebuilder(
        corpus_path,
        config.index,
        backbone,
        frozen_below=first_trained_layer(backbone, top) if top is not None else None,
        cache_gib=config.model.async_cache_gib,
    )


def _check_out(out: Path, config: TrainConfig, resume: bool) -> None:
    if (out / MANIFEST).is_file():
        raise NpdecodeError(f"{out} holds a finished run; choose another --out")
    if out.exists() and any(out.iterdir()):
        saved = out / "config.yml"
        if not resume:
            raise NpdecodeError(f"{out} holds an unfinished run; pass --resume to continue it, or choose another --out")
        if saved.is_file() and yaml.safe_load(saved.read_text()) != config.model_dump(mode="json"):
            raise NpdecodeError(f"{saved}: the run was started with another config; resume with the same config")


def _backbone(config: TrainConfig, out: Path) -> str:
    from npdecode.train.sources import resolve_backbone

    return resolve_backbone(config.backbone, out, seed=config.trainer.seed)


def prepare(config: TrainConfig, out: Path, backbone_ref: str, data, corpus, index, say):
    """Model, Lightning module and data module of a run (everything but the fit)."""
    from npdecode.train.data import Collate, ExampleSet, TrainData
    from npdecode.train.module import GRModule
    from npdecode.train.validate import Validator
    from npdecode.trie import Trie

    model = build_model(config, backbone_ref, index)
    examples, validation, tokens = make_examples(config, out, model, data, corpus, index, say)
    mode = "token" if config.model.variant == "vanilla" else "ce"
    trie = Trie.load(index.trie_path(mode))
    validator = Validator(
        trie,
        [index.live_doc_ids(g) for g in range(len(index.groups))],
        validation.queries,
        validation.qrels,
        beam=config.validation.beam,
    )
    tracked = [g.ce for g in index.groups] if config.model.ce_encoder == "async" else None
    module = GRModule(model, config, validator if validation.queries else None, group_ce=tracked)
    datamodule = TrainData(
        ExampleSet(tokens, targets_of(index, config.model.variant), examples.groups),
        Collate(model.backbone.pad_token_id, model.start_id),
        batch_size=config.data.batch_size,
        seed=config.trainer.seed,
        val_qids=sorted(validation.queries),
        num_workers=config.data.num_workers,
        length_buckets=config.data.length_buckets,
    )
    return module, datamodule, examples, validation


def _fit_and_save(
    config: TrainConfig, out: Path, backbone_ref: str, data, corpus, index, rebuilder, *, resume: bool, say
):
    import pytorch_lightning as pl
    import torch

    pl.seed_everything(config.trainer.seed, workers=True, verbose=False)
    threads = torch.get_num_threads()
    try:
        if config.trainer.threads:
            torch.set_num_threads(config.trainer.threads)
        return _fit(config, out, backbone_ref, data, corpus, index, rebuilder, resume=resume, say=say)
    finally:
        torch.set_num_threads(threads)  # the caller's setting comes back


def _fit(config: TrainConfig, out: Path, backbone_ref: str, data, corpus, index, rebuilder, *, resume: bool, say):
    import torch

    from npdecode.train.segments import RunClock, resume_point
    from npdecode.train.trainer import make_trainer, quiet_fit

    module, datamodule, examples, validation = prepare(config, out, backbone_ref, data, corpus, index, say)
    module.train()  # backbones load in eval mode; a frozen encoder stays in eval (see GRModule.train)
    last = out / "lightning" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        _check_resumable(last, module)
        say(f"resuming from {last}")
    callbacks = []
    if config.model.ce_encoder == "async":
        from npdecode.train.async_ce import AsyncCE

        rebuilder = rebuilder or _rebuilder(config, data.corpus_path, module.model.backbone)
        callbacks.append(AsyncCE(rebuilder, config.model.async_every_n_epochs, say=say))
    resume_step, earlier = resume_point(last if ckpt_path else None)
    t = config.trainer
    clock = RunClock(earlier, resume_step, config.data.batch_size * config.optim.accumulate * t.devices * t.num_nodes)
    callbacks.append(clock)
    with quiet_fit(config):
        trainer, checkpoint_cb = make_trainer(
            config, out, has_validation=module.validator is not None, callbacks=callbacks, resume_step=resume_step
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    clock.stop()
    if trainer.interrupted:
        raise NpdecodeError(f"training was interrupted; continue it with --resume --out {out}")
    if trainer.global_rank != 0:
        return {}
    best = checkpoint_cb.best_model_path if module.validator is not None else ""
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
        score = checkpoint_cb.best_model_score  # None in the launching process of a ddp_spawn run
        say(
            f"selected {Path(best).name}"
            + (f" (val {config.validation.metric} {float(score):.4f})" if score is not None else "")
        )
    if rebuilder is not None:  # the run's index becomes the table the selected model trained with
        from npdecode.index.layout import load_index
        from npdecode.train.async_ce import apply_targets, write_final_index

        write_final_index(module, rebuilder, out / "index", out / "checkpoint")
        apply_targets(None, module)
        index = load_index(out / "index")
    return _save_run(config, out, backbone_ref, data, corpus, index, module, trainer, examples, validation, clock, say)


def _check_resumable(ckpt: Path, module) -> None:
    import torch

    from npdecode.integrity import reading

    remedy = "delete it to train that stage from its start (or start a new run dir)"
    with reading(ckpt, remedy):  # a truncated or damaged last.ckpt: one line, not torch's traceback
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    mine = module.state_dict()
    bad = [k for k in mine if k not in state or tuple(state[k].shape) != tuple(mine[k].shape)]
    if bad:
        raise NpdecodeError(
            f"{ckpt} was saved for another model or index ({bad[0]} differs); start a new run dir instead of --resume"
        )


def _save_run(config, out: Path, backbone_ref, data, corpus, index, module, trainer, examples, validation, clock, say):
    """Write checkpoint/, point the index at it, measure memorisation, write manifest.json last.
    ``training`` counts the whole run: every segment of it (the first and each resume) from ``clock``."""
    from npdecode.corpus import corpus_digest
    from npdecode.index.manifest import model_digest, now, package_versions, read_manifest, write_manifest
    from npdecode.model import save_model
    from npdecode.train.segments import totals
    from npdecode.train.validate import memorisation

    model = module.model.cpu().eval()
    save_model(model, out / "checkpoint")
    manifest = read_manifest(out / "index")
    manifest.model.checkpoint = os.path.relpath(out / "checkpoint", out / "index")
    write_manifest(out / "index", manifest)
    final_val = module.validator.mean(model) if module.validator is not None else {}
    memo = memorisation(model, index, corpus, config)
    metrics = {"validation": final_val, "memorisation_success_1": memo}
    if config.validation.eval_datasets:
        metrics["zero_shot"] = _zero_shot(config, out, say)
    steps, epochs = _progress(trainer, out)
    segments = clock.segments(steps)
    total = totals(segments)
    run = {
        "format": "npdecode-run/1",
        "created": now(),
        "config": config.model_dump(mode="json"),
        "backbone": {"ref": backbone_ref, "digest": model_digest(backbone_ref)},
        "data": {
            "dataset": config.data.dataset,
            "corpus": str(Path(data.corpus_path).resolve()),
            "corpus_digest": corpus_digest(data.corpus_path),
            "notes": data.notes,
            "examples": examples.counts(),
            "validation": {"kind": validation.kind, "queries": len(validation.queries)},
        },
        "training": {"steps": steps, "epochs": epochs, **total, "segments": segments},
        "metrics": metrics,
        "versions": package_versions(),
    }
    with open(out / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(run, fh, indent=2)
    say(
        f"{out}: {steps} steps in {total['seconds'] / 60:.1f} min"
        + (f" ({len(segments)} segments)" if len(segments) > 1 else "")
        + "; "
        f"validation {json.dumps({k: round(v, 4) for k, v in final_val.items()})}; "
        f"memorisation Hits@1 {memo:.3f}"
    )
    return run


def _zero_shot_plan(config: TrainConfig):
    """The eval datasets (loaded: a bad name fails before the run starts) and retrievers."""
    from npdecode.eval.zero_shot import check_retrievers, load_datasets

    v = config.validation
    retrievers = list(v.eval_retrievers or (["genre"] if config.model.variant == "vanilla" else ["np"]))
    if not v.eval_datasets:
        return [], retrievers
    check_retrievers(retrievers)
    return load_datasets(v.eval_datasets, v.eval_split, config.data.data_dir), retrievers


def _zero_shot(config: TrainConfig, out: Path, say) -> dict:
    """``{dataset: {retriever: metrics}}`` of the saved checkpoint over the eval datasets, each
    corpus indexed with it under RUN/zero_shot/ (the same path as ``npdecode eval --gr-model``)."""
    from npdecode.eval.zero_shot import zero_shot_scores

    datasets, retrievers = _zero_shot_plan(config)
    device = "cpu" if config.trainer.accelerator == "cpu" else "auto"
    scores = zero_shot_scores(
        out / "checkpoint",
        datasets,
        retrievers,
        cache_dir=out / "zero_shot",
        options={"device": device, "beam": config.validation.beam},
        say=say,
    )
    for name, by_retriever in scores.items():
        say(
            f"zero-shot {name}: "
            + "; ".join(f"{r} nDCG@10 {m.get('ndcg_cut_10', 0.0):.4f}" for r, m in by_retriever.items())
        )
    return scores


def _progress(trainer, out: Path) -> tuple[int, int]:
    """Optimizer steps and epochs run. A ddp_spawn fit ran in child processes, whose loop state
    does not come back to this one: read it from the last checkpoint then."""
    import torch

    steps, epochs = int(trainer.global_step), int(trainer.current_epoch)
    last = out / "lightning" / "last.ckpt"
    if steps == 0 and last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False)
        steps, epochs = int(saved["global_step"]), int(saved["epoch"]) + 1
    return steps, epochs
