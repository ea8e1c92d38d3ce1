"""Experiment trackers through Accelerate's tracker classes: TensorBoard by default, written into the run folder;
MLflow (a file store in the run folder unless MLFLOW_TRACKING_URI says otherwise), Weights & Biases or trackio when
the recipe names them in ``output.trackers``.

Every record of metrics.jsonl goes to each tracker as well: training records as ``train/loss`` and ``train/lr``,
evaluation records as ``validation/<metric>``, at the run's optimiser step. Only the main process writes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

from tunelab.errors import RecipeError

# tracker name -> (package that must be installed, how to install it)
NEEDS = {"tensorboard": ("tensorboardX", "pip install tensorboardX"), "mlflow": ("mlflow", "pip install mlflow-skinny"),
         "wandb": ("wandb", "pip install wandb"), "trackio": ("trackio", "pip install trackio")}


def require_trackers(names: list[str]) -> None:
    """Refuse, before any work, a tracker whose package is missing, saying what to install or remove."""
    for name in names:
        package, install = NEEDS[name]
        if importlib.util.find_spec(package) is None:
            raise RecipeError(f"output.trackers: '{name}' needs the package {package}, which is not installed; "
                              f"{install}, or remove '{name}' from output.trackers")


def start_trackers(names: list[str], run_dir: Path, run_name: str, config: dict[str, Any]) -> list[GeneralTracker]:
    """Start the named trackers for a run and record its resolved recipe with each."""
    require_trackers(names)
    trackers = []
    for name in names:
        if name == "tensorboard":
            tracker = LOGGER_TYPE_TO_CLASS[name](run_name, logging_dir=run_dir / "tensorboard")
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_TRACKING_URI", uri)
            tracker = LOGGER_TYPE_TO_CLASS[name](experiment_name=run_name, logging_dir=uri)
        else:
            tracker = LOGGER_TYPE_TO_CLASS[name](run_name)
        if hasattr(tracker, "start"):
            tracker.start()
        tracker.store_init_configuration(_flat(config))
        trackers.append(tracker)
    return trackers


def tracker_values(record: dict[str, Any]) -> tuple[dict[str, float], int | None]:
    """A metrics.jsonl record as tracker scalars (``train/loss``, ``validation/accuracy``) and its step."""
    split = record.get("split", "train")
    values = {f"{split}/{key.removeprefix('train_')}": float(value) for key, value in record.items()
              if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return values, record.get("step")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as one level of ``section.key`` values (what trackers' hyper-parameter tables take)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
