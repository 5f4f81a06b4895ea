"""The search stage's registry (nothing dropped, plugins through entry points) and its typed
options (strict, each default once, used the same way by the CLI and the Python API)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from npdecode.errors import NpdecodeError
from npdecode.search import SearchOptions, registry


def test_every_builtin_module_registers_and_nothing_is_dropped():
    from npdecode.search import retrievers

    registry.load_builtin_retrievers()
    by_module = {}
    for info in pkgutil.iter_modules(retrievers.__path__):
        module = importlib.import_module(f"{retrievers.__name__}.{info.name}")
        by_module[info.name] = {n for n, f in registry._FACTORIES.items() if f.__module__ == module.__name__}
    assert by_module == {"bm25": {"bm25"}, "dense": {"dense"}, "generative": {"np", "genre"}}
    assert {"bm25", "dense", "np", "genre"} <= set(registry.retriever_names())


def test_entry_point_plugins_register_and_cannot_take_a_builtin_name(monkeypatch):
    class EP:
        def __init__(self, name, obj):
            self.name, self.value, self._obj = name, f"plugin:{name}", obj

        def load(self):
            return self._obj

    def factory(corpus, options):
        return ("plugin", options.beam)

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_BUILTIN", set())
    monkeypatch.setattr(
        registry,
        "entry_points",
        lambda group: [EP("plugin-test", factory)] if group == registry.ENTRY_POINT_GROUP else [],
    )
    for mod in ("bm25", "dense", "generative"):  # re-register the built-ins as a fresh process would
        monkeypatch.delitem(__import__("sys").modules, f"npdecode.search.retrievers.{mod}")
    monkeypatch.setattr(registry, "_FACTORIES", {})
    assert registry.build_retriever("plugin-test", None, {"beam": 3}) == ("plugin", 3)
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [EP("bm25", factory)])
    monkeypatch.setattr(registry, "_FACTORIES", {})
    monkeypatch.setattr(registry, "_BUILTIN", set())
    for mod in ("bm25", "dense", "generative"):
        monkeypatch.delitem(__import__("sys").modules, f"npdecode.search.retrievers.{mod}")
    with pytest.raises(ValueError, match="'bm25' is already registered"):
        registry.load_builtin_retrievers()


def test_options_are_strict_and_defaults_live_in_one_place():
    assert SearchOptions().beam == 10 and SearchOptions.of({"beam": None}).beam == 10  # None: the default
    assert SearchOptions.of(SearchOptions(beam=4), length_penalty=1.0) == SearchOptions(beam=4, length_penalty=1.0)
    with pytest.raises(NpdecodeError, match="bem"):
        SearchOptions.of({"bem": 4})
    with pytest.raises(NpdecodeError, match="beam"):
        SearchOptions.of(beam=0)
    with pytest.raises(NpdecodeError, match="trie_mode"):
        SearchOptions.of(trie_mode="tokens")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        SearchOptions().beam = 3  # type: ignore[misc]
