import json
import subprocess
import sys

import pytest

from npdecode import __version__
from npdecode.cli import main
from npdecode.runs import read_run


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_eval_bm25_writes_json_run_and_table(beir_dir, tmp_path, capsys):
    out = tmp_path / "out"
    main(["eval", "--dataset", str(beir_dir), "--retriever", "bm25", "--json", str(out / "m.json"),
          "--run", str(out / "r.trec"), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    stdout = capsys.readouterr().out
    assert "bm25" in stdout and "nDCG@10" in stdout
    report = json.loads((out / "m.json").read_text())
    metrics = report["retrievers"]["bm25"]["metrics"]
    for key in ("ndcg_cut_10", "recall_100", "recip_rank", "recip_rank_cut_10", "Rprec", "success_10", "map_cut_100"):
        assert 0.0 <= metrics[key] <= 1.0
    assert report["num_queries"] == 3 and set(report["retrievers"]["bm25"]["per_query"]) == {"q1", "q2", "q3"}
    run = read_run(out / "r.trec")
    assert set(run) <= {"q1", "q2", "q3"}
    assert max(run["q1"], key=run["q1"].get) == "d1"


def test_eval_compares_retrievers_with_significance_and_plot(beir_dir, tmp_path, tiny_bert_dir, capsys, monkeypatch):
    from matplotlib.figure import Figure

    titles, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda fig, t, **kw: (titles.append(t), suptitle(fig, t, **kw))[1])
    out = tmp_path / "out"
    main(["eval", "-d", str(beir_dir), "-r", "bm25", "-r", "dense", "--dense-model", str(tiny_bert_dir),
          "--device", "cpu", "--json", str(out / "m.json"), "--run", str(out / "r.trec"), "--plot", str(out / "c.png"),
          "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    report = json.loads((out / "m.json").read_text())
    assert list(report["retrievers"]) == ["bm25", "dense"] and report["reference"] == "bm25"
    pvalues = report["retrievers"]["dense"]["pvalues_vs_reference"]
    assert set(pvalues) == set(report["retrievers"]["bm25"]["metrics"]) and all(0 <= p <= 1 for p in pvalues.values())
    assert (out / "r.bm25.trec").is_file() and (out / "r.dense.trec").is_file()
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles == [f"{beir_dir.name} (test)"]  # the plot names the dataset, not its path
    printed = capsys.readouterr().out
    assert "paired t-test against bm25" in printed and f"{beir_dir.name} (test, 3 judged queries)" in printed


def test_user_mistakes_are_one_line_errors(beir_dir, tmp_path, capsys):
    err = _fail(["eval", "--dataset", str(tmp_path / "nowhere")], capsys)
    assert err.startswith("error: unknown dataset") and err.count("\n") == 1
    err = _fail(["eval", "--dataset", str(beir_dir), "--retriever", "nope", "--json", str(tmp_path / "m.json")], capsys)
    assert "unknown retriever 'nope'" in err and not (tmp_path / "m.json").exists()
    (beir_dir / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n')
    err = _fail(
        ["eval", "--dataset", str(beir_dir), "--json", str(tmp_path / "m.json"), "--cache-dir", str(tmp_path)], capsys
    )
    assert "duplicate document id 'd1'" in err and not (tmp_path / "m.json").exists()


def test_version_help_and_module_entry():
    done = subprocess.run([sys.executable, "-m", "npdecode", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in done.stdout
    done = subprocess.run([sys.executable, "-m", "npdecode", "--help"], capture_output=True, text=True, check=True)
    assert "eval" in done.stdout and "demo" in done.stdout
