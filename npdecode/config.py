"""Reading the YAML files users write (index settings, merge recipes, experiments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from npdecode.errors import NpdecodeError


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse the YAML file ``path``; a missing file or bad YAML is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise NpdecodeError(f"{path}: {what} not found; pass an existing YAML file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise NpdecodeError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
