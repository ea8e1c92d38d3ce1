"""Class labels as names, whatever type a file stores them as."""

from __future__ import annotations

from typing import Any


def label_name(value: Any) -> str | None:
    """Labels are kept as names; integers and integral floats from files become their decimal string."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else None
    if isinstance(value, (int, str)):
        return str(value).strip() or None
    return None
