"""The package's stages depend only downward, and no modules import each other in a cycle.

Order: core (``npdecode/*.py``: model, decoder, trie, backbone, data contracts) <- ``index`` <-
``search`` <- ``eval`` <- ``train`` <- ``demo`` <- the command dispatcher; ``serve`` sits beside
``demo`` (it may use core, index, search and eval); ``merge`` depends on the core only (and only
``train`` and above use it). Every import counts, also the ones inside
functions. Read with the standard library's AST, no third-party tool.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "npdecode"
RANK = {"core": 0, "merge": 1, "index": 1, "search": 2, "eval": 3, "train": 4, "demo": 5, "serve": 5, "entry": 6}
ALLOWED_INTO_MERGE = {"train", "demo", "entry"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("__main__", "cli"):
        return "entry"
    if len(parts) > 1 and parts[1] in ("merge", "index", "search", "eval", "train", "demo", "serve"):
        return parts[1]
    return "core"


def imports() -> dict[str, set[str]]:
    """module -> the npdecode modules it imports (absolute names, resolved to existing modules)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            for target in targets:
                if target.startswith("npdecode"):
                    while target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target in modules and target != name:
                        found.add(target)
        graph[name] = found
    return graph


def test_stages_depend_only_downward():
    bad = []
    for source, targets in imports().items():
        a = stage(source)
        for target in targets:
            b = stage(target)
            if a == b or target == "npdecode":
                continue
            if b == "merge" and a not in ALLOWED_INTO_MERGE or a == "merge" and b != "core" or RANK[b] >= RANK[a]:
                bad.append(f"{source} ({a}) -> {target} ({b})")
    assert not bad, "imports against the stage order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]) if nxt in path else nxt)
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
