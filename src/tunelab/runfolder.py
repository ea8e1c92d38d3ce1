"""The run folder: everything a user needs after training, laid out the same way for every run.

```
runs/<name>/recipe.yaml      the resolved recipe (defaults filled in); its first line marks the folder as tunelab's
            metrics.jsonl    one JSON record per log/eval event
            summary.json     before/after metrics, data counts, parameters, drift, time, memory
            report.md/.html  the same for people, with plots/
            checkpoints/     step-NNNNNNN folders (crash-safe, hashed)
            final/           a Hugging Face folder loadable without tunelab (+ tunelab.json)
```
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from tunelab.errors import RunError
from tunelab.recipe import Recipe, dump_recipe, load_recipe
from tunelab.io import append_line, atomic_write_text, write_json
from tunelab.tracking import tracker_values


NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
RUN_MARKER = "# tunelab run folder: written by tunelab train; --overwrite may replace this folder\n"


def check_name(name: str, what: str = "--name") -> str:
    """A folder name must be one plain path component: a name with '/' or '..' would reach outside the output folder,
    where --overwrite would delete whatever it points at."""
    if not NAME_PATTERN.fullmatch(name) or name.startswith("."):
        raise RunError(f"{what} '{name}' is not a plain folder name: use letters, digits, '.', '_' and '-', not starting "
                       "with '.' (no '/' and no '..'); the folder always goes under the output folder")
    return name


def is_tunelab_run(folder: Path) -> bool:
    """Whether tunelab wrote this folder: its recipe.yaml carries the run marker, or (runs from before the marker)
    it has recipe.yaml and metrics.jsonl or summary.json. Only such a folder may be replaced by --overwrite."""
    recipe = folder / "recipe.yaml"
    if not recipe.is_file():
        return False
    with recipe.open(encoding="utf-8", errors="replace") as handle:
        if handle.readline() == RUN_MARKER:
            return True
    return (folder / "metrics.jsonl").is_file() or (folder / "summary.json").is_file()


def run_dir_for(recipe: Recipe, name: str | None, overwrite: bool) -> Path:
    """The run folder a new run would get, checked before any work: a plain name, and an existing folder only with
    ``overwrite`` and only if tunelab wrote it (so --overwrite never deletes a folder of the user's)."""
    name = check_name(name) if name else check_name(f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}", "recipe name")
    run_dir = Path(recipe.output.dir) / name
    if run_dir.exists() and not overwrite:
        raise RunError(
            f"{run_dir} already exists; pass --resume to continue it, --overwrite to replace it, or --name for a new one"
        )
    if run_dir.exists() and not is_tunelab_run(run_dir):
        raise RunError(f"{run_dir} exists but is not a tunelab run folder (no recipe.yaml written by tunelab train), so "
                       "--overwrite will not delete it. Move or delete it yourself, or choose another --name.")
    return run_dir


def new_run_dir(recipe: Recipe, name: str | None, overwrite: bool) -> Path:
    """Create the run folder; an existing one is never replaced unless ``overwrite`` is given and tunelab wrote it.

    The folder is filled as a hidden temporary one and renamed into place, so a kill can never leave a run
    folder without its recipe.yaml (which no command could then resume or replace without --overwrite). The
    recipe.yaml starts with the run marker, which is what lets a later --overwrite replace the folder.
    """
    run_dir = run_dir_for(recipe, name, overwrite)
    require_free_space(run_dir, MIN_FREE_BYTES)
    tmp = run_dir.with_name(f".{run_dir.name}.new")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        atomic_write_text(tmp / "recipe.yaml", RUN_MARKER + dump_recipe(recipe))
        if run_dir.exists():
            old = run_dir.with_name(f".{run_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(run_dir, old)
            shutil.rmtree(old)
        os.replace(tmp, run_dir)
    except OSError as err:
        raise RunError(f"cannot write the run folder {run_dir}: {err.strerror or err}; choose output.dir elsewhere") from None
    return run_dir


MIN_FREE_BYTES = 512 * 2**20


def checkpoint_bytes(trainable: int, total: int, keep: int) -> int:
    """Disk a run will need: each checkpoint holds trainable weights and two AdamW moments (fp32), ``keep`` of them
    plus the best and one being written, and final/ holds the whole model."""
    return 4 * (3 * trainable * (keep + 2) + total)


def require_free_space(folder: Path, needed: int) -> None:
    """Fail before training, not at the first checkpoint, when the disk cannot hold what the run will write."""
    existing = next((p for p in (folder.absolute(), *folder.absolute().parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise RunError(f"only {free // 2**20} MiB free on the disk of {folder}; this run needs about {needed // 2**20} MiB "
                       "for checkpoints and the final model. Free space, lower train.keep_checkpoints, or change output.dir.")


def check_not_finished(run_dir: Path) -> None:
    """A finished run (summary.json is written last) has nothing to resume; say so instead of training again."""
    if (run_dir / "summary.json").is_file():
        raise RunError(f"{run_dir} has already finished (its summary.json is written); nothing to resume. "
                       f"Its model is in {run_dir / 'final'}; use --overwrite or a new --name to train again.")


def existing_run(run_dir: str | Path) -> tuple[Path, Recipe]:
    """A run folder and its resolved recipe, or a clear error if it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunError(f"{run_dir}: no such run folder; runs are under output.dir (default runs/)")
    if not (run_dir / "recipe.yaml").is_file():
        raise RunError(f"{run_dir} is not a tunelab run folder (no recipe.yaml); runs are under output.dir (default runs/)")
    return run_dir, load_recipe(run_dir / "recipe.yaml")


class MetricsLog:
    """metrics.jsonl, appended line by line and flushed, plus an in-memory copy for plots."""

    def __init__(self, path: Path, enabled: bool = True, trackers: list[Any] | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.trackers = trackers or []  # experiment trackers (tracking.py) that receive every record as well
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            self.records = _read_records(path)

    def truncate_after(self, step: int) -> None:
        """On resume, forget records written after the checkpoint we continue from (they will be redone)."""
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.enabled:
            try:
                append_line(self.path, record)
            except OSError as err:
                raise RunError(f"cannot append to {self.path} ({err.strerror or err}); the checkpoints are intact. "
                               "Free disk space, then resume the run with --resume.") from None
        values, step = tracker_values(record)
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def close(self) -> None:
        """Flush and close the trackers (their files are complete afterwards)."""
        for tracker in self.trackers:
            tracker.finish()


def _read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as records; a torn last line (a kill in mid-write) is dropped, damage elsewhere is an error."""
    lines = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise RunError(f"{path}, line {number}: not a JSON record; the metrics log is damaged") from None
    return records
