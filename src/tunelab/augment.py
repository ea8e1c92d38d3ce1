"""data.augment: synthetic training rows drawn from a trained class-conditional generative run.

Why here and not in data/: drawing needs the generative run's model (``tunelab.run``, which sits above the data
layer), so this module makes the rows and ``data.prepare.prepare_rows`` takes them through its ``extra_train`` hook,
after the splits are final: the rows join the training split only (validation and test stay real), and the
summary's data counts say how many were added and from which run.

The draw is balanced across the recipe's classes (counts differ by at most one, in label order) and seeded by the
recipe seed, so two runs of one recipe train on the same synthetic rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tunelab.data.sources import Row
from tunelab.errors import DataError
from tunelab.recipe import AugmentConfig, Recipe
from tunelab.run import Run

SUPPORTED = {"image_classification": "image"}  # classification task type -> the generative input it takes


def balanced_counts(labels: list[str], n: int) -> dict[str, int]:
    """n rows over the classes, as evenly as possible: the first n % k classes (in label order) get one more."""
    k = len(labels)
    return {name: n // k + (i < n % k) for i, name in enumerate(labels)}


def _source_run(cfg: AugmentConfig, recipe: Recipe) -> Run:
    """The generative run, refused unless it is finished, class-conditional and of the input this task reads."""
    run = Run(cfg.run)
    run.summary  # raises for an unfinished run (no summary.json), naming how to resume it
    gen = run.recipe.task
    if gen.type != "gan" or not getattr(gen, "conditional", False):
        what = f"a run of task.type {gen.type}" if gen.type != "gan" else "a GAN run without task.conditional"
        raise DataError(f"data.augment.run: {cfg.run} is {what}; augmentation needs a class-conditional generative "
                        "run (task.type gan with task.conditional: true, e.g. tunelab train recipes/gan-digits.yaml) "
                        "so that every sample comes with its class")
    wanted = SUPPORTED.get(recipe.task.type)
    if wanted is None or gen.input != wanted:
        raise DataError(f"data.augment: a {recipe.task.type} recipe cannot take samples of a GAN on '{gen.input}' "
                        f"inputs ({cfg.run}); supported: "
                        + ", ".join(f"{task} from an {inp} GAN" for task, inp in SUPPORTED.items()))
    return run


def synthetic_rows(cfg: AugmentConfig, recipe: Recipe, task: Any) -> tuple[list[Row], dict[str, Any]]:
    """cfg.n rows from the run's final model, balanced over ``task.label_names``, and what to report of them."""
    run = _source_run(cfg, recipe)
    source = run.task
    ours, theirs = list(task.label_names), list(source.labels)
    if set(ours) != set(theirs):
        raise DataError(f"data.augment.run: {cfg.run} draws the labels {theirs}, but this recipe's labels are "
                        f"{ours}; train the generative run on the same classes (or set data.labels to match)")
    counts = balanced_counts(ours, cfg.n)
    classes = np.repeat([theirs.index(name) for name in ours], [counts[name] for name in ours])
    values, names = source.draw(source.model, cfg.n, recipe.seed, classes)
    size = source.info["image_size"]
    shape = (size, size) if source.info["grayscale"] else (size, size, 3)
    where = f"{run.dir}/final (synthetic)"
    rows = [Row({task.image_col: np.clip(np.round(value.reshape(shape) * 255.0), 0, 255).astype(np.uint8),
                 task.label_col: name}, where, i + 1) for i, (value, name) in enumerate(zip(values, names))]
    return rows, {"run": str(cfg.run), "rows": cfg.n, "seed": recipe.seed, "per_class": counts}


def augmenter(recipe: Recipe) -> Callable[[Any], tuple[list[Row], dict[str, Any]]] | None:
    """The ``extra_train`` hook of prepare_rows for this recipe, or None without data.augment."""
    cfg = recipe.data.augment
    return None if cfg is None else (lambda task: synthetic_rows(cfg, recipe, task))
