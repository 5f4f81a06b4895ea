"""Length normalisation as Hugging Face's beam scorer defines it: a finished hypothesis scores
``sum of log-probabilities / (generated tokens incl. EOS) ** length_penalty``."""

from __future__ import annotations

import pytest

from npdecode.backbone import load_backbone
from npdecode.decoding import search
from npdecode.model import VanillaModel
from npdecode.trie import build_trie
from tests.core.helpers import dict_trie
from tests.tiny_models import toy_corpus


def _hf_ranked(model: VanillaModel, paths: list[list[int]], query: str, length_penalty: float):
    """HF generate + prefix callback over the same token paths, every path a beam (exhaustive).
    ``early_stopping="never"``: with fewer allowed tokens than beams, HF's default stop returns
    padding beams scored ~-1e9 instead of the remaining paths."""
    trie = dict_trie(paths)

    def allowed(_, sent):
        node = trie
        for t in sent.tolist()[1:]:
            node = node.get(t)
            if node is None:
                return [model.eos_id]
        return [t for t in node if t >= 0] or [model.eos_id]

    hf = model.backbone.model
    enc = model.backbone.tokenizer([query], return_tensors="pt")
    n = len(paths)
    out = hf.generate(
        **enc,
        num_beams=n,
        num_return_sequences=n,
        max_new_tokens=max(map(len, paths)) + 1,
        prefix_allowed_tokens_fn=allowed,
        length_penalty=length_penalty,
        early_stopping="never",
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    index = {tuple(p): i for i, p in enumerate(paths)}
    ranked = []
    for seq, score in zip(out.sequences[:, 1:].tolist(), out.sequences_scores.tolist()):
        seq = seq[: seq.index(model.eos_id) + 1]
        ranked.append((index[tuple(seq)], score))
    return ranked


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_length_penalty_matches_hf_beam_scorer(t5_dir, length_penalty):
    model = VanillaModel(load_backbone(t5_dir)).eval()
    docs = toy_corpus(6, seed=3)
    paths = [model.backbone.tokenize_identifier(d["title"]) + [model.eos_id] for d in docs.values()]
    trie = build_trie(paths, list(range(len(paths))), id_space="token")
    for query in ("alpha river gold", "storm over the harbor"):
        ours = search(model, trie, [query], k=len(paths), beam=len(paths), length_penalty=length_penalty)[0]
        theirs = _hf_ranked(model, paths, query, length_penalty)
        assert [v for v, _ in ours] == [v for v, _ in theirs]
        for (_, a), (_, b) in zip(ours, theirs):
            assert a == pytest.approx(b, abs=1e-4)
        raw = dict(search(model, trie, [query], k=len(paths), beam=len(paths))[0])  # lp 0: the raw sum
        for value, score in ours:
            assert score == pytest.approx(raw[value] / len(paths[value]) ** length_penalty, abs=1e-5)


def test_search_and_eval_take_length_penalty_and_group_mode(t5_dir, tmp_path, capsys):
    from npdecode.cli import main
    from npdecode.index.builder import build_index
    from npdecode.index.layout import load_index
    from tests.index.helpers import fast_config, toy_corpus_file

    idx = build_index(toy_corpus_file(tmp_path, 8, seed=2), t5_dir, tmp_path / "idx", fast_config())
    lengths = {d: len(g.ce) + 1 for g in load_index(idx).groups for d in g.doc_ids}
    scores = {}
    for lp in ("0", "1.0"):
        capsys.readouterr()
        main(["search", str(idx), "alpha river", "-k", "8", "--beam", "8", "--length-penalty", lp])
        rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
        scores[lp] = {r[1]: float(r[2]) for r in rows}
    for doc, raw in scores["0"].items():
        assert scores["1.0"][doc] == pytest.approx(raw / lengths[doc], abs=2e-4)
    capsys.readouterr()
    main(["search", str(idx), "alpha river", "-k", "3", "--trie-mode", "group"])
    group_rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert len(group_rows) == 3 and all(r[1] in lengths for r in group_rows)
    from npdecode.search.registry import build_retriever

    retriever = build_retriever("np", tmp_path, {"index": idx, "length_penalty": 1.0, "device": "cpu", "beam": 8})
    assert retriever.options.length_penalty == 1.0  # what `npdecode eval --length-penalty 1.0` passes
