"""The engine behind the server over a tiny index, in this process: documents and the BM25
retriever served from the index's corpus files, before and after a live append."""

from __future__ import annotations

from npdecode.search.options import SearchOptions
from npdecode.serve.engine import append_and_load, load_engine
from npdecode.serve.settings import ServeSettings
from tests.serve.conftest import N_DOCS


def test_bm25_serves_the_index_documents_and_finds_an_appended_one(index_dir, tmp_path):
    settings = ServeSettings(index_dir=index_dir, retriever="bm25", search=SearchOptions.of(cache_dir=tmp_path))
    engine = load_engine(settings)
    assert len(engine.documents) == N_DOCS and engine.generation == 0
    title = engine.documents["d4"]["title"]
    assert engine.search([title], 3)[0][0][0] == "d4"  # its own title finds it first

    new = {"fresh": {"title": "Xylophone Zeppelin", "text": "xylophone zeppelin quasar"}}
    grown = append_and_load(settings, engine, new, replace=False)
    assert grown.generation == 1 and len(grown.documents) == N_DOCS + 1
    assert grown.documents["fresh"]["title"] == "Xylophone Zeppelin"
    assert grown.search(["xylophone zeppelin"], 3)[0][0][0] == "fresh"
    assert "fresh" not in dict(engine.search(["xylophone zeppelin"], 3)[0])  # the old engine is unchanged
    assert (index_dir / "posted" / "00001.jsonl").is_file() and (index_dir / "posted" / "live-00001.jsonl").is_file()
