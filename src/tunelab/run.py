"""A finished run as one typed object: what ``tunelab.train`` returns and what the CLI, compare, a web app and a
server build on, instead of each re-reading the run folder its own way.

A ``Run`` is also its folder (``os.PathLike``, ``run / "summary.json"``, ``run.rglob(...)``), so code that treats a run as its folder keeps
working. The trained model is loaded from ``final/`` on first use, not when the run is opened.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from tunelab.data.prepare import prepare_rows
from tunelab.errors import RunError
from tunelab.evaluate.precision import evaluation_autocast
from tunelab.runfolder import existing_run
from tunelab.tasks import load_task


class Run(os.PathLike):
    """A run folder with its recipe and summary; ``model``, ``processor``, ``predict`` and ``evaluate`` on demand."""

    def __init__(self, folder: str | Path) -> None:
        self.dir, self.recipe = existing_run(folder)

    # ---- a run is its folder --------------------------------------------------------------------------------
    def __fspath__(self) -> str:
        return str(self.dir)

    def __truediv__(self, part: str) -> Path:
        return self.dir / part

    def __getattr__(self, name: str) -> Any:
        """Path methods (``exists``, ``rglob``, ``name``, ...) act on the run folder."""
        if name.startswith("__") or name == "dir":
            raise AttributeError(name)
        return getattr(self.dir, name)

    def __str__(self) -> str:
        return str(self.dir)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, task={self.recipe.task.type}, strategy={self.recipe.strategy.method})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Run, os.PathLike, str)) and Path(self.dir) == Path(os.fspath(other))

    def __hash__(self) -> int:
        return hash(self.dir)

    # ---- what it holds ----------------------------------------------------------------------------------------
    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: before/after metrics, data counts, parameters, cost (written last, when the run finished)."""
        path = self.dir / "summary.json"
        if not path.is_file():
            raise RunError(f"{self.dir}: the run has not finished (no summary.json); resume it with "
                           f"tunelab train {self.dir} --resume")
        return json.loads(path.read_text(encoding="utf-8"))

    @cached_property
    def task(self) -> Any:
        """The task holding the trained model read back from final/ (its processor, labels, predict, evaluate)."""
        return load_task(self.dir / "final", self.recipe)

    @property
    def model(self) -> Any:
        return self.task.model

    @property
    def processor(self) -> Any:
        """What turns raw inputs into model inputs: the tokenizer, or the image preprocessing."""
        return getattr(self.task, "processor", None) or getattr(self.task, "tokenizer", None)

    # ---- use --------------------------------------------------------------------------------------------------
    def predict(self, inputs: list[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """Predictions for raw inputs (texts, image paths): label and scores per input."""
        return self.task.predict(self.model, inputs, batch_size)

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Metrics of the trained model on one split, rebuilt exactly as training split and sampled the data."""
        task = self.task
        splits, _ = prepare_rows(self.recipe.data, task, self.recipe.seed, self.recipe.eval.max_examples)
        if split not in splits:
            raise RunError(f"split '{split}' does not exist; splits: {', '.join(splits)}")
        return score_split(task, task.model, splits[split], self.recipe)


def score_split(task: Any, model: Any, features: list[Any], recipe: Any, generate: bool = True) -> dict[str, Any]:
    """One split's metrics, as training and ``tunelab eval`` both report them: the task's evaluation, and for
    generation tasks (``generate``) BLEU, chrF, ROUGE-L and outputs as well, all under the run's train.precision."""
    with evaluation_autocast(model, recipe.train.precision):
        metrics = task.evaluate(model, features, recipe.eval.batch_size)
        if generate and hasattr(task, "generate_and_score"):
            metrics |= task.generate_and_score(model, features, recipe.eval.batch_size)
    return metrics


def open_run(folder: str | Path | Run) -> Run:
    """A run folder as a ``Run``, with a clear error if it is not one."""
    return folder if isinstance(folder, Run) else Run(folder)
