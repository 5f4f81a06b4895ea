"""The user's documentation: the README opens with the two commands, stays a short guide, and
neither it nor docs/, configs/ or the package points at the developers' ``../shared`` folder;
every relative link in README, CHANGELOG and docs/ reaches a file of the checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_FILES = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "configs").glob("*.yml")),
    *sorted(p for p in (ROOT / "npdecode").rglob("*.py")),
]


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines: move details to docs/, history to CHANGELOG.md"
    assert not any("Earlier releases" in line for line in lines)


@pytest.mark.parametrize("path", USER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_at_the_developers_shared_folder(path):
    text = path.read_text(encoding="utf-8")
    for pointer in ("../shared", "/work/shared", "DESIGN.md", "papers.md"):
        assert pointer not in text, f"{path.relative_to(ROOT)} names {pointer}, which users do not have"


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_relative_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name}: link {target} does not resolve"
