"""A progress bar that shows what a person watching training wants: loss, learning rate, speed, time left."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress:
    """Rich progress over optimiser steps; silent on non-main processes."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:.1f} ex/s"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            disable=not enabled, transient=False,
        )
        self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), lr=0.0, speed=0.0)

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, value, tb)

    def update(self, step: int, loss: float, lr: float, speed: float) -> None:
        self.bar.update(self.task, completed=step, loss=loss, lr=lr, speed=speed)
