"""The run folder: everything a user needs after training, laid out the same way for every run.

```
runs/<name>/recipe.yaml      the resolved recipe (defaults filled in)
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
import shutil
import time
from pathlib import Path
from typing import Any

from tunelab.errors import RunError
from tunelab.recipe import Recipe, dump_recipe, load_recipe
from tunelab.train.checkpoint import append_line, atomic_write_text


def new_run_dir(recipe: Recipe, name: str | None, overwrite: bool) -> Path:
    """Create the run folder; an existing one is never replaced unless ``overwrite`` is given."""
    name = name or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(recipe.output.dir) / name
    if run_dir.exists():
        if not overwrite:
            raise RunError(
                f"{run_dir} already exists; pass --resume to continue it, --overwrite to replace it, or --name for a new one"
            )
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise RunError(f"cannot write the run folder {run_dir}: {err.strerror}; choose output.dir elsewhere") from None
    free = shutil.disk_usage(run_dir).free
    if free < 512 * 2**20:
        raise RunError(f"only {free // 2**20} MiB free on the disk of {run_dir}; checkpoints need more. Free space first.")
    atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    return run_dir


def existing_run(run_dir: str | Path) -> tuple[Path, Recipe]:
    """A run folder and its resolved recipe, or a clear error if it is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise RunError(f"{run_dir} is not a tunelab run folder (no recipe.yaml); runs are under output.dir (default runs/)")
    return run_dir, load_recipe(run_dir / "recipe.yaml")


class MetricsLog:
    """metrics.jsonl, appended line by line and flushed, plus an in-memory copy for plots."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            self.records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """On resume, forget records written after the checkpoint we continue from (they will be redone)."""
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.enabled:
            append_line(self.path, record)


def write_json(path: Path, value: Any) -> None:
    """Atomically write JSON (summary, final/tunelab.json)."""
    atomic_write_text(path, json.dumps(value, indent=2, default=str))


def publish_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place so ``final/`` is never half-written."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
