"""Training speed: `npdecode train`'s Lightning loop vs a bare PyTorch loop, and the cheap-step levers.

Both sides train the same model (bert2bert warm-started from the packaged all-MiniLM-L6-v2) on
the same batches of the bundled SciFact sample (indexing + pseudo-query + training-query
examples, the demo's mix), with the same optimizer, schedule and clipping; the bare loop calls
the module's own loss, so the difference is Lightning's overhead (target <= 5%). Throughput is
examples per second over ``--steps`` steps after ``--warmup`` steps, measured inside the loop
(no model loading or indexing). Repeats alternate the two sides; medians are reported.

Levers (the same measurement with the Lightning loop): full fine-tuning with every decoder
layer (the straightforward baseline), a frozen encoder whose states are cached (a step is a
decoder step), and the same with 2 decoder layers, and with 1 decoder layer and 32-token inputs
(the demo's setting; Lightning vs bare is measured on it and on full fine-tuning). For cached variants
the cache is filled before timing (its one-time cost, an encoder forward pass over all
examples, is reported separately).

    .venv/bin/python benchmarks/train_speed.py [--steps 30] [--warmup 5] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch

from npdecode.train.components import run_index
from npdecode.train.config import load_train_config
from npdecode.train.run import prepare
from npdecode.train.sources import load_training_data, resolve_backbone

FULL = "full fine-tune, 6 decoder layers"
SAMPLE = Path(__file__).resolve().parents[1] / "npdecode" / "data" / "scifact-sample"
LEVERS = {
    "full fine-tune, 6 decoder layers": {"model.freeze_encoder": False},
    "frozen cached encoder, 6 decoder layers": {"model.freeze_encoder": True},
    "frozen cached encoder, 2 decoder layers": {"model.freeze_encoder": True, "model.decoder_layers": 2},
    "frozen cached encoder, 1 decoder layer, 32-token inputs (demo)": {
        "model.freeze_encoder": True,
        "model.decoder_layers": 1,
        "data.max_input_length": 32,
    },
}
DEMO = {"model.decoder_layers": 1, "data.max_input_length": 32}
# ce_encoder async trains the encoder's top layer: the states entering it cached, or the whole encoder run
LEVERS["top encoder layer trains, uncached, 1 decoder layer, 32-token inputs"] = {
    "model.train_encoder_layers": 1,
    "model.cache_encoder_states": False,
    **DEMO,
}
LEVERS["top encoder layer trains, layers below cached, 1 decoder layer, 32-token inputs"] = {
    "model.train_encoder_layers": 1,
    **DEMO,
}
BARE_COMPARED = "frozen cached encoder, 1 decoder layer, 32-token inputs (demo)"


def _config(overrides: dict, steps: int):
    sets = [
        "data.index_input=title_text",
        "data.pseudo_queries.per_document=2",
        "data.query_repeat=2",
        "model.logit_scale=0.1",
        "optim.optimizer=adamw",
        "optim.lr=5e-4",
        "trainer.accelerator=cpu",
        "trainer.progress=false",
        f"trainer.max_steps={steps}",
        "validation.queries=0",
        "index.max_length=128",
        "index.progress=false",
    ]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_train_config(None, tuple(sets), **{"data.dataset": str(SAMPLE)})


class _Clock(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, idx):
        self.end = time.perf_counter()


def _fill_cache(module, datamodule) -> float:
    if module.cache is None:
        return 0.0
    start = time.perf_counter()
    module.train()
    loader = torch.utils.data.DataLoader(datamodule.examples, batch_size=64, collate_fn=datamodule.collate)
    with torch.no_grad():
        for batch in loader:
            module.encoder_states(batch)  # fills the cache (whatever it holds)
    return time.perf_counter() - start


def lightning_rate(parts, steps: int, warmup: int, batch: int) -> float:
    module, datamodule = parts
    clock = _Clock(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[clock],
        use_distributed_sampler=False,
    )
    module.train()
    trainer.fit(module, datamodule=datamodule)
    return steps * batch / (clock.end - clock.start)


def bare_rate(parts, steps: int, warmup: int, batch: int) -> float:
    """The same step without Lightning: loss, backward, clip, optimizer and schedule steps."""
    module, datamodule = parts
    module.train()
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    params = [p for p in module.parameters() if p.requires_grad]
    loader = datamodule.train_dataloader()
    done, start = 0, None
    while done < warmup + steps:
        for batch_data in loader:
            if done == warmup:
                start = time.perf_counter()
            loss = module.loss(batch_data)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == warmup + steps:
                break
    return steps * batch / (time.perf_counter() - start)


def build(config, run_dir: Path, say):
    data = load_training_data(config.data.dataset, None, "train")
    from npdecode.corpus import load_corpus

    corpus = load_corpus(data.corpus_path)
    ref = resolve_backbone(config.backbone, run_dir)
    index = run_index(data.corpus_path, ref, run_dir / "index", config, say)
    module, datamodule, _, _ = prepare(config, run_dir, ref, data, corpus, index, say)
    datamodule.trainer = None
    return module, datamodule


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.json")
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS), help="A subset to measure.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    results: dict = {"levers": {}, "lightning_vs_bare": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        for name in args.levers:
            overrides = LEVERS[name]
            config = _config(overrides, args.warmup + args.steps)
            torch.manual_seed(0)
            parts = build(config, run_dir, print)
            cache_s = _fill_cache(*parts)
            batch = config.data.batch_size
            rates = {"lightning": [], "bare": []}
            sides = ["lightning", "bare"] if name in (BARE_COMPARED, FULL) else ["lightning"]
            for r in range(args.repeats):
                for side in sides if r % 2 == 0 else sides[::-1]:
                    fn = lightning_rate if side == "lightning" else bare_rate
                    rates[side].append(fn(parts, args.steps, args.warmup, batch))
                    print(f"{name} [{side}] {rates[side][-1]:.1f} examples/s", flush=True)
            results["levers"][name] = {
                "examples_per_second": statistics.median(rates["lightning"]),
                "repeats": rates["lightning"],
                "cache_fill_seconds": round(cache_s, 1),
            }
            if rates["bare"]:
                ratios = [a / b for a, b in zip(rates["lightning"], rates["bare"])]
                results["lightning_vs_bare"][name] = {
                    "lightning": rates["lightning"],
                    "bare": rates["bare"],
                    "median_ratio": statistics.median(ratios),
                    "overhead_percent": round(100 * (1 - statistics.median(ratios)), 2),
                }
            del parts
    if FULL in results["levers"]:
        base = results["levers"][FULL]["examples_per_second"]
        for row in results["levers"].values():
            row["speedup_vs_full"] = round(row["examples_per_second"] / base, 2)
    results.update(
        {
            "machine": conditions.measured(threads=args.threads),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "command": " ".join(["benchmarks/train_speed.py", *sys.argv[1:]]),
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_size": 32,
        }
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
