"""``npdecode merge`` vs MergeKit, side by side on the same recipes and inputs.

Builds random ~250M-parameter checkpoints (t5-v1.1 layout and Llama layout; a base plus two
"fine-tunes" = base + small noise), runs both tools as subprocesses on the same YAML recipes,
and records wall time, peak RSS and peak anonymous memory (``/proc/<pid>/status`` polled every
20 ms over the process tree), plus parity (max abs difference over every output tensor).
It also runs inputs MergeKit is known to fail on (original T5 with ``DenseReluDense.wi``, BART
with a union tokenizer) and checks that our output loads in transformers.

MergeKit lives in its own virtual environment (it is LGPL; nothing of it is imported here)::

    python3 -m venv /tmp/mkvenv && /tmp/mkvenv/bin/pip install torch==2.13.0 && /tmp/mkvenv/bin/pip install mergekit
    .venv/bin/python benchmarks/merge_vs_mergekit.py --mergekit /tmp/mkvenv/bin/mergekit-yaml

Results go to ``benchmarks/results/merge_vs_mergekit.{json,md}`` with the machine and date.
After a change to one method, ``--families llama --methods ties --update`` reruns just those
cases (both tools again) and replaces their rows, each marked with its own date and load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# -- inputs ---------------------------------------------------------------------------------
def _config(family: str):
    import transformers as tf

    if family == "t5v11":  # t5-v1_1-base layout (~248M parameters)
        cfg = tf.T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                          num_heads=12, feed_forward_proj="gated-gelu", decoder_start_token_id=0)  # fmt: skip
        cfg.tie_word_embeddings = False
        return cfg, tf.T5ForConditionalGeneration
    if family == "t5":  # original T5 (t5-small layout: ReLU DenseReluDense.wi, tied head)
        cfg = tf.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                          feed_forward_proj="relu", decoder_start_token_id=0)  # fmt: skip
        return cfg, tf.T5ForConditionalGeneration
    if family == "llama":  # ~266M parameters
        cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                             num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False)  # fmt: skip
        return cfg, tf.LlamaForCausalLM
    if family == "bart":  # small BART; vocabularies set per model
        cfg = tf.BartConfig(vocab_size=1000, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                            max_position_embeddings=64, forced_eos_token_id=None)  # fmt: skip
        return cfg, tf.BartForConditionalGeneration
    raise ValueError(family)


def _shapes(family: str, vocab_size: int | None = None) -> tuple[dict[str, tuple[int, ...]], object]:
    cfg, cls = _config(family)
    if vocab_size is not None:
        cfg.vocab_size = vocab_size
    cfg.architectures = [cls.__name__]  # as a saved model's config has it (MergeKit needs it)
    with torch.device("meta"):
        model = cls(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, cfg


def build_checkpoint(family: str, out: Path, variant: int, vocab: list[str] | None = None) -> Path:
    """Random weights in the family's layout; ``variant`` > 0 adds N(0, 0.01) to the base."""
    from safetensors.torch import save_file

    if (out / "config.json").exists():
        return out
    shapes, cfg = _shapes(family, len(vocab) if vocab else None)
    tensors = {}
    for name, shape in shapes.items():
        if family in ("t5", "bart") and name in ("lm_head.weight", "encoder.embed_tokens.weight",
                                                  "decoder.embed_tokens.weight", "model.encoder.embed_tokens.weight",
                                                  "model.decoder.embed_tokens.weight"):  # fmt: skip
            continue  # tied: saved once, like transformers
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        t = torch.randn(shape, generator=g) * 0.02 if len(shape) > 1 else 1 + 0.1 * torch.randn(shape, generator=g)
        if variant:
            g.manual_seed(zlib.crc32(name.encode()) + 7919 * variant)
            t += 0.01 * torch.randn(shape, generator=g)
        tensors[name] = t.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(out))
    if vocab:
        _save_word_tokenizer(out, vocab)
    return out


def _save_word_tokenizer(path: Path, vocab: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                            bos_token="<s>").save_pretrained(str(path))  # fmt: skip


ALL_METHODS = (
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_ties", "dare_linear",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock", "nearswap", "arcee_fusion",
    "passthrough", "ram", "ramplus_tl",
)  # fmt: skip


def recipe_for(method: str, base: Path, fts: list[Path], family: str = "llama") -> dict:
    """The recipe of ``method`` on ``base`` and two fine-tunes (MergeKit's parameter names).

    The six headline methods keep the recipes of the first runs (linear over the three
    models; task-vector methods with weight 0.5, density 0.5, normalize). Two-model methods
    (slerp, nearswap, arcee_fusion) take the base and the first fine-tune; passthrough stacks
    the first 3/4 of one fine-tune's layers onto the last 3/4 of the other's on decoder-only
    families (the output config's layer count is updated by both tools), and scales one
    fine-tune's attention outputs by 0.5 on encoder-decoder ones (layer slices do not apply)."""
    b, (a, c) = str(base), [str(f) for f in fts]
    layers = layer_count(family)
    f32 = {"dtype": "float32"}

    def weighted(models, weights, extra=None):
        return [{"model": m, "parameters": {"weight": w, **(extra or {})}} for m, w in zip(models, weights)]

    def task_vectors(extra=None, glob=None):
        return {
            "merge_method": method,
            "base_model": b,
            "models": weighted([a, c], [0.5, 0.5], {"density": 0.5, **(extra or {})}),
            "parameters": {"normalize": True, **(glob or {})},
            **f32,
        }

    recipes = {
        "linear": lambda: {"merge_method": "linear", "models": weighted([b, a, c], [0.2, 0.4, 0.4]), **f32},
        "slerp": lambda: {
            "merge_method": "slerp",
            "base_model": b,
            "models": [{"model": b}, {"model": a}],
            "parameters": {"t": 0.3},
            **f32,
        },
        "nuslerp": lambda: {"merge_method": "nuslerp", "base_model": b, "models": weighted([a, c], [0.4, 0.6]), **f32},
        "multislerp": lambda: {"merge_method": "multislerp", "models": weighted([b, a, c], [0.2, 0.4, 0.4]), **f32},
        "karcher": lambda: {
            "merge_method": "karcher",
            "models": [{"model": m} for m in (b, a, c)],
            "parameters": {"max_iter": 10, "tol": 1e-5},
            **f32,
        },
        "task_arithmetic": lambda: {**task_vectors(), "models": weighted([a, c], [0.5, 0.5])},
        "ties": task_vectors,
        "dare_ties": task_vectors,
        "dare_linear": task_vectors,
        "breadcrumbs": lambda: task_vectors({"gamma": 0.01}),
        "breadcrumbs_ties": lambda: task_vectors({"gamma": 0.01}),
        "della": lambda: task_vectors({"epsilon": 0.1}),
        "della_linear": lambda: task_vectors({"epsilon": 0.1}),
        "sce": lambda: {
            "merge_method": "sce",
            "base_model": b,
            "models": [{"model": m} for m in (a, c)],
            "parameters": {"select_topk": 0.5},
            **f32,
        },
        "model_stock": lambda: {
            "merge_method": "model_stock",
            "base_model": b,
            "models": [{"model": m} for m in (a, c)],
            **f32,
        },
        "nearswap": lambda: {
            "merge_method": "nearswap",
            "base_model": b,
            "models": [{"model": b}, {"model": a}],
            "parameters": {"t": 0.005},
            **f32,
        },
        "arcee_fusion": lambda: {
            "merge_method": "arcee_fusion",
            "base_model": b,
            "models": [{"model": b}, {"model": a}],
            **f32,
        },
        "passthrough": lambda: (
            {
                "merge_method": "passthrough",
                "slices": [
                    {"sources": [{"model": a, "layer_range": [0, 3 * layers // 4]}]},
                    {"sources": [{"model": c, "layer_range": [layers // 4, layers]}]},
                ],
                **f32,
            }
            if family == "llama"
            else {
                "merge_method": "passthrough",
                "models": [
                    {"model": a, "parameters": {"scale": [{"filter": "SelfAttention.o", "value": 0.5}, {"value": 1.0}]}}
                ],
                **f32,
            }
        ),
        "ram": lambda: {"merge_method": "ram", "base_model": b, "models": [{"model": m} for m in (a, c)], **f32},
        "ramplus_tl": lambda: {
            "merge_method": "ramplus_tl",
            "base_model": b,
            "models": [{"model": m} for m in (a, c)],
            **f32,
        },
    }
    if method not in recipes:
        raise ValueError(f"no benchmark recipe for {method!r}")
    return recipes[method]()


def layer_count(family: str) -> int:
    cfg, _ = _config(family)
    return getattr(cfg, "num_hidden_layers", None) or cfg.num_layers


# -- running --------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        pids += map(int, kids)
        frontier += map(int, kids)
    return pids


def _mem_kb(pid: int) -> tuple[int, int]:
    rss = anon = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
        except OSError:
            pass
    return rss, anon


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; wall seconds, peak RSS / anonymous MiB, exit status, last log line."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
        peak_rss = peak_anon = 0
        while proc.poll() is None:
            rss, anon = _mem_kb(proc.pid)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(0.02)
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    tail = [l for l in text.splitlines() if l.strip()][-1:] or [""]
    res = {"ok": proc.returncode == 0, "returncode": proc.returncode, "wall_s": round(wall, 2),
           "peak_rss_mib": round(peak_rss / 1024, 1), "peak_anon_mib": round(peak_anon / 1024, 1),
           "last_line": tail[0][-300:]}  # fmt: skip
    if not res["ok"]:
        res["error"] = error_line(text)
    return res


def error_line(text: str) -> str:
    """The exception line of a traceback (the last ``SomethingError: ...`` line), else the last line."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Exit")) and " " not in head:
            return line[:300]
    return (lines[-1] if lines else "")[:300]


def ours_cmd(recipe: Path, out: Path, seed: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "npdecode", "merge", str(recipe), str(out), "--no-progress",
            "--no-copy-tokenizer", "--random-seed", str(seed), "-j", str(threads)]  # fmt: skip


def mergekit_cmd(mk: str, recipe: Path, out: Path, seed: int) -> list[str]:
    return [mk, str(recipe), str(out), "--no-copy-tokenizer", "--random-seed", str(seed), "--quiet"]


def max_abs_diff(a: Path, b: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from npdecode.merge.tensor_io import open_model_dir

    ra, rb = open_model_dir(str(a), a).reader, open_model_dir(str(b), b).reader
    ka, kb = set(ra.keys()), set(rb.keys())
    worst, where, n_diff, n_total = 0.0, None, 0, 0
    for name in sorted(ka & kb):
        diff = (ra.get(name).double() - rb.get(name).double()).abs()
        n_diff += int((diff > 1e-5).sum())
        n_total += diff.numel()
        if diff.max().item() > worst:
            worst, where = diff.max().item(), name
    # elements off by more than 1e-5: with random inputs, ties in |task vector| at the TIES
    # threshold are broken differently by argsort (MergeKit) and topk (ours)
    return {"max_abs_diff": worst, "worst_tensor": where, "elements_over_1e-5": n_diff, "elements": n_total,
            "only_ours": sorted(ka - kb)[:5],
            "only_mergekit": sorted(kb - ka)[:5], "common_tensors": len(ka & kb)}  # fmt: skip


def threshold_ties(work: Path, family: str, name: str, density: float = 0.5) -> list[int]:
    """Per fine-tune: entries of ``|ft - base|`` in tensor ``name`` equal to the TIES
    threshold (the k-th largest magnitude). More than one means the kept set depends on how
    the sort breaks ties, which is where MergeKit (argsort) and ours (topk) may differ."""
    sys.path.insert(0, str(ROOT))
    from npdecode.merge.tensor_io import open_model_dir

    readers = [open_model_dir(str(i), work / "inputs" / f"{family}-{i}").reader for i in range(3)]
    base = readers[0].get(name).clone()
    counts = []
    for reader in readers[1:]:
        tv = (reader.get(name) - base).abs().reshape(-1)
        kth = torch.topk(tv, int(density * tv.numel()), sorted=False).values.min()
        counts.append(int((tv == kth).sum()))
    return counts


def annotate(result: dict, work: Path) -> None:
    """Add threshold-tie counts to TIES rows whose outputs differ from MergeKit's."""
    for row in result["side_by_side"]:
        par = row.get("parity") or {}
        if row["method"] == "ties" and par.get("elements_over_1e-5"):
            par["threshold_ties_in_worst_tensor"] = threshold_ties(work, row["family"], par["worst_tensor"])


def side_by_side(args, work: Path, family: str, method: str, inputs: list[Path]) -> dict:
    recipe = work / "recipes" / f"{family}-{method}.yml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(recipe_for(method, inputs[0], inputs[1:], family), sort_keys=False))
    runs: dict[str, list[dict]] = {"ours": [], "mergekit": []}
    for rep in range(args.repeats):
        for tool in ("mergekit", "ours") if rep % 2 == 0 else ("ours", "mergekit"):
            out = work / "out" / f"{family}-{method}-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = (ours_cmd(recipe, out, args.seed, args.threads) if tool == "ours"
                   else mergekit_cmd(args.mergekit, recipe, out, args.seed))  # fmt: skip
            runs[tool].append(run_measured(cmd, work / f"{family}-{method}-{tool}.log"))
            print(family, method, tool, runs[tool][-1], flush=True)
    row = {"family": family, "method": method, "repeats": args.repeats, "runs": runs}
    for tool, tool_runs in runs.items():
        ok = [r for r in tool_runs if r["ok"]]
        row[tool] = (
            {k: statistics.median(r[k] for r in ok) for k in ("wall_s", "peak_rss_mib", "peak_anon_mib")}
            if ok
            else None
        )
    if row["ours"] and row["mergekit"]:
        row["parity"] = max_abs_diff(
            work / "out" / f"{family}-{method}-ours", work / "out" / f"{family}-{method}-mergekit"
        )
        row["wall_ratio"] = round(row["ours"]["wall_s"] / row["mergekit"]["wall_s"], 3)
        row["rss_ratio"] = round(row["ours"]["peak_rss_mib"] / row["mergekit"]["peak_rss_mib"], 3)
        row["anon_ratio"] = round(row["ours"]["peak_anon_mib"] / max(row["mergekit"]["peak_anon_mib"], 1e-9), 3)
    for tool in runs:
        shutil.rmtree(work / "out" / f"{family}-{method}-{tool}", ignore_errors=True)
    return row


def failure_cases(args, work: Path) -> list[dict]:
    """Original T5 and BART with a union tokenizer: MergeKit's result vs ours (and ours loads)."""
    rows = []
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    cases = {
        "t5-original-linear": (["t5", "t5"], [None, None], None),
        "bart-union-tokenizer": (
            ["bart", "bart"],
            [
                specials + [f"s{i}" for i in range(900)] + [f"a{i}" for i in range(96)],
                specials + [f"b{i}" for i in range(50)] + [f"s{i}" for i in range(900)],
            ],
            "union",
        ),
    }
    for name, (fams, vocabs, tok) in cases.items():
        paths = [
            build_checkpoint(f, work / "inputs" / f"{name}-{i}", i, v) for i, (f, v) in enumerate(zip(fams, vocabs))
        ]
        recipe = {"merge_method": "linear", "base_model": str(paths[0]), "dtype": "float32",
                  "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in paths]}  # fmt: skip
        if tok:
            recipe["tokenizer"] = {"source": tok}
        path = work / "recipes" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        row = {"case": name}
        for tool in ("mergekit", "ours"):
            out = work / "out" / f"{name}-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = (
                ours_cmd(path, out, args.seed, args.threads)
                if tool == "ours"
                else mergekit_cmd(args.mergekit, path, out, args.seed)
            )
            cmd.remove("--no-copy-tokenizer")  # the tokenizer is part of what must load
            row[tool] = run_measured(cmd, work / f"{name}-{tool}.log")
            row[tool]["loads_and_finite"] = _loads(out) if row[tool]["ok"] else False
        rows.append(row)
        print(row, flush=True)
    return rows


def _loads(out: Path) -> bool | str:
    """Whether transformers loads ``out`` without missing weights and gives finite logits."""
    import transformers as tf

    try:
        model, info = tf.AutoModelForSeq2SeqLM.from_pretrained(str(out), output_loading_info=True)
        if info.get("missing_keys"):
            return f"missing keys: {sorted(info['missing_keys'])[:3]}"
        ids = torch.tensor([[5, 6, 7, 1]])
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=ids[:, :2]).logits
        return bool(torch.isfinite(logits).all())
    except Exception as err:  # noqa: BLE001 - report any failure to load, don't crash the benchmark
        return f"{type(err).__name__}: {str(err)[:200]}"


def machine() -> dict:
    return {**conditions.measured(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")


def _parity_cell(row: dict) -> str:
    par = row["parity"]
    diff = f"{par['max_abs_diff']:.3g}"
    if "elements_over_1e-5" in par:
        diff += f" ({par['elements_over_1e-5']} of {par['elements']} elements > 1e-5)"
    if par.get("threshold_ties_in_worst_tensor"):
        diff += (
            f"; {par['worst_tensor']}: {par['threshold_ties_in_worst_tensor']} entries per task vector tie at the "
            "density threshold, kept or dropped by the sort's tie-break"
        )
    if row["method"] in RANDOM_METHODS:
        return f"{diff} (random drop masks; different RNGs, parity not expected)"
    return diff + (" ✓" if row["parity"]["max_abs_diff"] <= 1e-5 else " ✗ (> 1e-5)")


WALL_TARGETS = {"linear": 1.0, "ties": 0.5, "dare_ties": 0.5}  # the targets; memory: 0.5 for every method


def _timing_cell(row: dict, tool: str, key: str) -> str:
    """The median, followed by every run's value when there were several."""
    values = [r[key] for r in row["runs"][tool] if r["ok"]]
    median = row[tool][key]
    return f"{median} ({', '.join(map(str, values))})" if len(values) > 1 else f"{median}"


def _status(row: dict, tool: str) -> str:
    """A tool's time, or its error line when a run failed."""
    bad = [x for x in row["runs"][tool] if not x["ok"]]
    if bad:
        return f"fails: `{(bad[0].get('error') or bad[0]['last_line'])[:160]}`"
    return _timing_cell(row, tool, "wall_s")


def _row_when(row: dict, result: dict) -> str:
    rec = row.get("rerun")
    return f"{rec['date'][:16]}, load {rec['load_average_1min']}" if rec else f"{result['machine']['date'][:16]}"


def _verdict(row: dict) -> str:
    checks = {"RSS": row["rss_ratio"] <= 0.5, "anon": row["anon_ratio"] <= 0.5}
    if row["method"] in WALL_TARGETS:
        checks = {"wall": row["wall_ratio"] <= WALL_TARGETS[row["method"]], **checks}
    return ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in checks.items())


def write_markdown(result: dict, path: Path) -> None:
    """The results as a table, the targets row by row, then the hand-written notes kept in
    ``<stem>.notes.md`` (if any), which every rewrite carries over."""
    m = result["machine"]
    lines = [
        f"# npdecode merge vs MergeKit ({result['mergekit_version']})", "",
        (f"Machine: {m['processor']}, {m['nproc']} CPUs; torch {m['torch']}. Ours with `-j {result['threads']}`, "
         "MergeKit with its defaults, on the same recipes and inputs (random ~250M-parameter checkpoints); the two "
         "tools ran alternately (repeat by repeat, the order swapped every repeat). Times and memory are medians "
         "over the row's runs (every run's value in brackets when there were several). The machine was shared with "
         "other jobs, so compare ratios within a row, not absolute times across rows; each row gives its date and "
         "1-min load average at its end. Full records (every run, exit status, error lines) are in the JSON."),
        "",
        ("| family | method | runs | when | ours s | MergeKit s | wall ratio | ours RSS MiB | MK RSS MiB | RSS ratio "
         "| ours anon MiB | MK anon MiB | anon ratio | max abs diff | targets |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["side_by_side"]:
        repeats = r.get("repeats") or r.get("rerun", {}).get("repeats") or result["repeats"]
        head = f"| {r['family']} | {r['method']} | {repeats} | {_row_when(r, result)} |"
        o, k = r.get("ours"), r.get("mergekit")
        if not (o and k):
            lines.append(f"{head} {_status(r, 'ours')} | {_status(r, 'mergekit')} | | | | | | | | | not comparable |")
            continue
        lines.append(
            f"{head} {_timing_cell(r, 'ours', 'wall_s')} | {_timing_cell(r, 'mergekit', 'wall_s')} | "
            f"{r['wall_ratio']} | {o['peak_rss_mib']} | {k['peak_rss_mib']} | {r['rss_ratio']} | "
            f"{o['peak_anon_mib']} | {k['peak_anon_mib']} | {r['anon_ratio']} | {_parity_cell(r)} | {_verdict(r)} |"
        )
    lines += [
        "",
        (
            "Targets (the issue's): ties and dare_ties wall time <= 0.5x MergeKit's, linear <= 1x; every method "
            "peak RSS and peak anonymous memory <= 0.5x MergeKit's. Other methods have no wall-time target (their "
            "ratio is reported all the same)."
        ),
        "",
        "## Inputs MergeKit fails on",
        "",
        "| case | MergeKit | ours | ours loads, finite logits |",
        "|---|---|---|---|",
    ]
    for r in result["failure_cases"]:
        mk = "ok" if r["mergekit"]["ok"] else f"fails: `{r['mergekit']['last_line'][:120]}`"
        lines.append(
            f"| {r['case']} | {mk} | {'ok' if r['ours']['ok'] else 'fails'} | {r['ours']['loads_and_finite']} |"
        )
    notes = path.with_suffix(".notes.md")
    if notes.is_file():
        lines += ["", notes.read_text(encoding="utf-8").rstrip()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit", default="/tmp/mkvenv/bin/mergekit-yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mergebench"))
    parser.add_argument("--families", default="t5v11,llama")
    parser.add_argument("--methods", default="linear,ties,dare_ties", help="comma-separated, or 'all' (20 methods)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-failure-cases", action="store_true")
    parser.add_argument("--results", default="merge_vs_mergekit", help="file stem under benchmarks/results/")
    parser.add_argument("--annotate-only", action="store_true", help="annotate existing results, run nothing")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rerun only the given families x methods and replace those rows in the existing "
        "results (marked with the rerun date); other rows and failure cases stay as they are",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        result = json.loads((RESULTS / f"{args.results}.json").read_text(encoding="utf-8"))
        write_markdown(result, RESULTS / f"{args.results}.md")
        return
    if args.annotate_only:
        result = json.loads((RESULTS / f"{args.results}.json").read_text(encoding="utf-8"))
        annotate(result, args.work)
        _save(result, args.results)
        return
    # Both tools run from compiled bytecode, as installed packages do (pip byte-compiles MergeKit;
    # an editable npdecode under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module
    # from source on each run: ~1-2 MiB of extra anonymous memory at startup).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "npdecode")], check=True)
    version = subprocess.run(
        [Path(args.mergekit).parent / "python", "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {"machine": machine(), "mergekit_version": version, "repeats": args.repeats, "threads": args.threads,
              "side_by_side": [], "failure_cases": []}  # fmt: skip
    if args.update:
        result = json.loads((RESULTS / f"{args.results}.json").read_text(encoding="utf-8"))
    for family in filter(None, args.families.split(",")):
        inputs = [build_checkpoint(family, args.work / "inputs" / f"{family}-{i}", i) for i in range(3)]
        for method in ALL_METHODS if args.methods == "all" else args.methods.split(","):
            row = side_by_side(args, args.work, family, method, inputs)
            if args.update:
                row["rerun"] = {**machine(), "load_average_1min": round(os.getloadavg()[0], 2),
                                "repeats": args.repeats, "threads": args.threads}  # fmt: skip
                rows = result["side_by_side"]
                at = [i for i, r in enumerate(rows) if (r["family"], r["method"]) == (family, method)]
                if at:
                    rows[at[0]] = row
                else:
                    rows.append(row)
            else:
                result["side_by_side"].append(row)
            _save(result, args.results)
    if args.update:
        annotate(result, args.work)
        _save(result, args.results)
        return
    if not args.skip_failure_cases:
        result["failure_cases"] = failure_cases(args, args.work)
    annotate(result, args.work)
    _save(result, args.results)


def _save(result: dict, stem: str) -> None:
    result.setdefault("load_average", []).append(round(os.getloadavg()[0], 2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, RESULTS / f"{stem}.md")


if __name__ == "__main__":
    main()
