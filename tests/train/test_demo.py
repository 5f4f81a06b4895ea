"""`npdecode demo` end to end with a tiny backbone (the real one trains MiniLM for minutes)."""

from __future__ import annotations

import json

from npdecode.cli import main


def test_demo_trains_indexes_and_compares_in_one_table(t5_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--vanilla",
        "--set",
        f"backbone={t5_dir}",
        "--set",
        "trainer.fast_dev_run=true",
        "--set",
        "trainer.progress=false",
        "--set",
        "index.max_length=1024",
        "--set",
        "index.progress=false",
        "--set",
        "validation.queries=8",
    ]
    main(args)
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["retrievers"]) == ["bm25", "dense", "np", "vanilla"]
    assert report["num_queries"] == 300
    for name in ("np", "vanilla"):
        assert (out / name / "manifest.json").is_file()
        rows = [line.split() for line in (out / f"run.{name}.trec").read_text().splitlines()]
        assert rows and all(r[5] == name for r in rows)
    printed = capsys.readouterr().out
    assert "memorisation Hits@1" in printed and "np:" in printed and "vanilla:" in printed
    stamp = (out / "np" / "manifest.json").stat().st_mtime
    main(args)  # finished runs are reused, not retrained
    assert (out / "np" / "manifest.json").stat().st_mtime == stamp
    assert "reusing" in capsys.readouterr().err
