"""docs/merge-recipes.md lists every registered method with the parameters and defaults the
registry really has (regenerate the table from ``methods_table()`` when a method changes)."""

from __future__ import annotations

from pathlib import Path

from npdecode.merge import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "merge-recipes.md"


def methods_table() -> str:
    registry.load_builtin_methods()

    def fmt(params: dict) -> str:
        return (
            ", ".join(f"`{k}`" + (" (required)" if v is registry.REQUIRED else f" = {v}") for k, v in params.items())
            or "—"
        )

    lines = [
        "| method | base model | random | global parameters (default) | per-model parameters (default) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in registry.all_methods():
        m = registry.get_method(name)
        lines.append(
            f"| {m.name} | {'required' if m.requires_base else 'optional'} | {'yes' if m.uses_random else ''} | "
            f"{fmt(m.global_params)} | {fmt(m.tensor_params)} |"
        )
    return "\n".join(lines)


def test_the_methods_table_of_the_docs_is_the_registry():
    assert methods_table() in DOC.read_text(encoding="utf-8")
