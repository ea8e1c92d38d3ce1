"""Finding the data that installed packages ship, and the shapes built-in loaders return."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

Loaded = tuple[list[dict[str, Any]], dict[str, int]]  # rows and a report of what was removed and why
Split = tuple[dict[str, list[dict[str, Any]]], dict[str, int]]  # pre-split: {"train", "validation", "test"} -> rows


def package_dir(package: str, install: str) -> Path:
    """Folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the package '{package}' is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))
