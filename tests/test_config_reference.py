"""The config reference pages (docs/config-{index,train,merge}.md) are the code's: every key of
every config class has a description, and each page equals what scripts/config_reference.py
generates from the classes now (regenerate with ``python scripts/config_reference.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)


def test_every_config_key_has_a_description():
    assert reference.missing_descriptions() == []


@pytest.mark.parametrize("stem", sorted(reference.kinds()))
def test_page_matches_the_config_classes(stem):
    page = ROOT / "docs" / f"{stem}.md"
    assert page.read_text(encoding="utf-8") == reference.render(stem), (
        f"{page} is out of date: run python scripts/config_reference.py"
    )


@pytest.mark.parametrize("stem", sorted(reference.kinds()))
def test_page_lists_every_key(stem):
    _, root, _ = reference.kinds()[stem]
    text = reference.render(stem)
    for path, cls in reference.sections(root, stop=reference._roots_elsewhere(stem)):
        heading = "## top level" if path == "" else f"## `{path.rstrip('.')}`"
        assert heading in text
        body = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for key in cls.model_fields:
            assert f"| `{key}` |" in body, f"{stem}: {path}{key} missing"


def test_a_key_without_description_is_reported(monkeypatch):
    from pydantic import BaseModel

    class Bare(BaseModel):
        documented: int = 1
        """Has one."""
        bare: int = 2

    Bare.model_fields["documented"].description = "Has one."
    kinds = reference.kinds()
    monkeypatch.setattr(reference, "kinds", lambda: {**kinds, "config-x": ("X", Bare, "")})
    assert reference.missing_descriptions() == ["config-x: bare"]
