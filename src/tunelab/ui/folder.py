"""What the output folder says about its runs, read the way the web app shows them: read-only, tolerant of files
being written while we read (a run in progress), and never reaching outside the folder.

Everything the app knows about a run comes from its folder (recipe.yaml, progress.json, metrics.jsonl, checkpoints/,
summary.json, report.html), so the app can be closed and restarted at any time and find every run again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from tunelab.runfolder import is_tunelab_run
from tunelab.train.checkpoint import complete_checkpoints

RUN_LOG = "train.log"  # the training process's output, once its run folder exists
MAX_RECORDS = 5000  # metrics records sent to the page (the newest): enough for any curve, bounded for long runs


def clean(value: Any) -> Any:
    """A value made strict JSON: NaN and infinities (a diverged loss) become None, which browsers can parse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def read_json(path: Path) -> Any:
    """A JSON file, or None when it is missing or half-written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_folders(root: Path) -> list[Path]:
    """The run folders directly under the output folder, newest first (hidden folders are tunelab's own)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_tunelab_run(p)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recipe_facts(folder: Path) -> dict[str, Any]:
    """Task, model and strategy from the run's saved recipe (the resolved one tunelab wrote)."""
    try:
        raw = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    section = lambda key: raw.get(key) if isinstance(raw.get(key), dict) else {}  # noqa: E731
    return {"task": section("task").get("type"), "model": section("model").get("name"),
            "strategy": section("strategy").get("method"), "metric": section("eval").get("metric")}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures a list of runs shows: the chosen metric on validation (best checkpoint) and on test, after."""
    best = summary.get("best") or {}
    metric = best.get("metric")
    test = (summary.get("after") or {}).get("test") or {}
    return {"metric": metric, "validation": best.get("value"), "test": test.get(metric), "steps": summary.get("steps"),
            "train_seconds": summary.get("train_seconds")}


def metrics(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records (a line being written is skipped), the newest MAX_RECORDS of them."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-MAX_RECORDS:]:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return clean(records)


def checkpoints(folder: Path) -> list[str]:
    """Names of the complete step checkpoints, oldest first."""
    return [p.name for p in complete_checkpoints(folder / "checkpoints")]


def tail(path: Path | None, lines: int = 60, max_bytes: int = 64_000) -> str:
    """The last lines of a log (reads only its end: a long run's log may be large)."""
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def last_error(path: Path | None) -> str | None:
    """The error a tunelab command printed last ('error: ...'), if its log has one."""
    text = tail(path, lines=200)
    found = [i for i, line in enumerate(text.splitlines()) if line.startswith("error:")]
    return " ".join(text.splitlines()[found[-1]:]).removeprefix("error:").strip() if found else None


def inside(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root``, or None when it is not a file there: '..', absolute paths and
    symbolic links that lead outside the output folder are refused, so the file route serves nothing else."""
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate
