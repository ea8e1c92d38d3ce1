"""tunelab: a workbench for transfer learning and fine-tuning of pretrained models.

Python API: ``tunelab.train(recipe) -> Run`` (a path-like run folder with ``.summary``, ``.model``, ``.predict(inputs)``
and ``.evaluate(split)``), ``tunelab.open_run(run_dir) -> Run``, ``tunelab.load(run_dir)`` (the task holding the trained
model), ``tunelab.evaluate(run_dir, split)``. The ``tunelab`` command wraps the same functions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "load", "evaluate", "open_run", "Run", "load_recipe"]


def __getattr__(name: str) -> Any:
    # Importing tunelab stays cheap (no torch) until an entry point is used.
    if name in ("train", "load", "evaluate"):
        from tunelab import api

        return getattr(api, name)
    if name in ("open_run", "Run"):
        from tunelab import run

        return getattr(run, name)
    if name == "load_recipe":
        from tunelab.recipe import load_recipe

        return load_recipe
    raise AttributeError(name)
