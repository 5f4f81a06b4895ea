"""Reading the YAML files users write (index settings, merge recipes, experiments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from npdecode.errors import NpdecodeError


def read_mapping(path: str | Path | None, what: str) -> dict:
    """The top-level mapping of the YAML file ``path`` (None or an empty file: ``{}``)."""
    if path is None:
        return {}
    loaded = read_yaml(path, what)
    if loaded is not None and not isinstance(loaded, dict):
        raise NpdecodeError(f"{path}: expected a mapping at top level ({what}); fix the file")
    return dict(loaded or {})


def validated(cls: type, data: dict, where: object, what: str) -> Any:
    """``cls(**data)`` for a pydantic model; a validation error becomes one line naming ``where``."""
    from pydantic import ValidationError

    try:
        return cls(**data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
        raise NpdecodeError(f"{where}: invalid {what} ({problems})") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse the YAML file ``path``; a missing file or bad YAML is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise NpdecodeError(f"{path}: {what} not found; pass an existing YAML file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise NpdecodeError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
