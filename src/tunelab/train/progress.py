"""A progress bar that shows what a person watching training wants: loss, learning rate, speed, time left.

The same figures go to ``progress.json`` in the run folder (at most once a second, and at the end), so that whatever
watches a run from outside the process (``tunelab ui``, a script) sees the step, the total and the speed without
parsing a terminal bar.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress:
    """Rich progress over optimiser steps; silent on non-main processes. ``path``: where progress.json goes."""

    def __init__(self, total: int, done: int, enabled: bool = True, path: Path | None = None) -> None:
        self.enabled = enabled
        self.path = path if enabled else None
        self.figures = {"step": done, "total": total, "loss": None, "lr": None, "examples_per_second": None}
        self.written = 0.0
        self.bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:.1f} ex/s"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            disable=not enabled, transient=False,
        )
        self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), lr=0.0, speed=0.0)

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        self._write()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, value, tb)
        self._write()

    def update(self, step: int, loss: float, lr: float, speed: float) -> None:
        self.bar.update(self.task, completed=step, loss=loss, lr=lr, speed=speed)
        finite = math.isfinite(loss)  # progress.json stays strict JSON (NaN is not), so a browser can parse it
        self.figures.update(step=step, loss=loss if finite else None, lr=lr, examples_per_second=speed)
        if time.monotonic() - self.written >= 1.0:
            self._write()

    def _write(self) -> None:
        """Replace progress.json whole (readers never see half a file); not fsynced: it is only a view, and a lost
        one is rewritten within a second. A full disk here must not stop training, so errors are ignored."""
        if self.path is None:
            return
        self.written = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps({**self.figures, "time": time.time()}), encoding="utf-8")
            os.replace(tmp, self.path)
        except (OSError, ValueError):
            pass
