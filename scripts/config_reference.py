"""Write the config reference pages docs/config-{index,train,merge}.md from the config classes.

Usage: python scripts/config_reference.py [--check]

Each page lists every key of one config kind (sections as nested tables): its type, its
default and its meaning, read from the typed pydantic classes (a field's description is the
docstring written under it). ``--check`` writes nothing and exits 1 when a page differs from
what the code gives; tests/test_config_reference.py runs the same comparison, and fails when
a key has no description, so the pages never drift from the code.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def kinds() -> dict[str, tuple[str, type[BaseModel], str]]:
    """page stem -> (title, root class, introduction)."""
    from npdecode.index.config import IndexConfig
    from npdecode.merge.config import MergeRecipe
    from npdecode.train.config import TrainConfig

    return {
        "config-index": (
            "Index config",
            IndexConfig,
            (
                "The YAML file `npdecode index CORPUS --model MODEL --out DIR --config FILE` reads "
                "(`configs/index-default.yml`), and the `index:` section of a training config. Every key has a "
                "default, so an empty file is a valid config; command-line flags (`--centroids`, `--raw-ce`, "
                "`--factory`, `--devices`, `--num-nodes`, `--trie-mode`) override keys of the same meaning."
            ),
        ),
        "config-train": (
            "Training config",
            TrainConfig,
            (
                "The YAML file `npdecode train CONFIG.yml --out RUN_DIR` reads (`configs/train-*.yml`); "
                "`--set section.key=value` overrides any key. Every key has a default except a budget "
                "(one of `trainer.max_epochs`, `max_steps`, `max_minutes`) and a dataset (`data.dataset` or "
                "`--dataset`). How the pieces fit together: [training.md](training.md)."
            ),
        ),
        "config-merge": (
            "Merge recipe",
            MergeRecipe,
            (
                "The YAML recipe `npdecode merge RECIPE.yml OUT_DIR` reads: MergeKit's format, read unchanged, "
                "plus `missing_tensors`. A recipe has exactly one of `models`, `slices` or `modules`. The methods "
                "and their parameters: [merge-recipes.md](merge-recipes.md)."
            ),
        ),
    }


def type_name(annotation: object) -> str:
    """A short, readable type: ``int``, ``"a" | "b"``, ``int | None``, ``list of str``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"map {type_name(args[0])} -> {type_name(args[1])}"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field) -> str:
    """The default as it would be written in YAML (``null`` for None); ``required`` when none."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def sections(
    root: type[BaseModel], prefix: str = "", stop: frozenset = frozenset()
) -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, class) of the root and every nested config class, depth first, each once;
    the classes in ``stop`` (the roots of other pages) are not expanded."""
    out = [(prefix, root)]
    for name, field in root.model_fields.items():
        for cls in _model_classes(field.annotation):
            if cls not in stop and cls not in {c for _, c in out}:
                out += [(p, c) for p, c in sections(cls, f"{prefix}{name}.", stop) if c not in {c for _, c in out}]
    return out


def _roots_elsewhere(stem: str) -> frozenset:
    return frozenset(root for other, (_, root, _) in kinds().items() if other != stem)


def _model_classes(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for a in typing.get_args(annotation) for c in _model_classes(a)]


def missing_descriptions() -> list[str]:
    """Every ``page: key`` whose field has no description."""
    missing = []
    for stem, (_, root, _) in kinds().items():
        for path, cls in sections(root, stop=_roots_elsewhere(stem)):
            missing += [f"{stem}: {path}{n}" for n, f in cls.model_fields.items() if not (f.description or "").strip()]
    return missing


def render(stem: str) -> str:
    title, root, intro = kinds()[stem]
    lines = [
        f"# {title} reference",
        "",
        "<!-- generated by scripts/config_reference.py from the config classes; do not edit by hand -->",
        "",
        intro,
        "",
    ]
    for path, cls in sections(root, stop=_roots_elsewhere(stem)):
        name = path.rstrip(".") or "top level"
        lines += [f"## {name if path == '' else '`' + name + '`'}", ""]
        doc = (cls.__doc__ or "").strip()
        if doc:
            lines += [one_line(doc), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for key, field in cls.model_fields.items():
            lines.append(
                f"| `{key}` | {type_name(field.annotation)} | `{default_text(field)}` | "
                f"{one_line(field.description or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    args = parser.parse_args()
    missing = missing_descriptions()
    if missing:
        print("keys without a description (write a docstring under the field):", *missing, sep="\n  ")
        return 1
    stale = []
    for stem in kinds():
        path = DOCS / f"{stem}.md"
        text = render(stem)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(path)
    if stale:
        print("out of date (run python scripts/config_reference.py):", *map(str, stale), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
