"""Experiment trackers through Accelerate's tracker classes: TensorBoard by default, written into the run folder;
MLflow (a file store in the run folder unless MLFLOW_TRACKING_URI says otherwise), Weights & Biases or trackio when
the recipe names them in ``output.trackers``.

Every record of metrics.jsonl goes to each tracker as well: training records as ``train/loss`` and ``train/lr``,
evaluation records as ``validation/<metric>``, at the run's optimiser step. Only the main process writes.

MLflow's fluent API, which Accelerate's tracker drives, keeps its tracking URI process-wide (and copies it into
MLFLOW_TRACKING_URI for child processes). A run therefore sets the URI when its tracker starts and puts back what was
there when it finishes, so the next run in the same process (``tunelab ui``, a notebook) logs into its own folder,
not the previous run's.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, MLflowTracker

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


def start_trackers(names: list[str], run_dir: Path, run_name: str, config: dict[str, Any],
                   resume: bool = False) -> list[GeneralTracker]:
    """Start the named trackers for a run and record its resolved recipe with each; a resumed run continues its
    MLflow run rather than starting a second one."""
    require_trackers(names)
    trackers: list[GeneralTracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                tracker = LOGGER_TYPE_TO_CLASS[name](run_name, logging_dir=run_dir / "tensorboard")
            elif name == "mlflow":
                tracker = RunMLflowTracker(run_dir, experiment_name=str(config.get("name") or run_name), run_name=run_name,
                                           resume=resume)
            else:
                tracker = LOGGER_TYPE_TO_CLASS[name](run_name)
            if hasattr(tracker, "start"):
                tracker.start()
            trackers.append(tracker)
            tracker.store_init_configuration(_flat(config))
    except BaseException:
        for tracker in trackers:  # an MLflow run left active would make the next run's start fail
            tracker.finish()
        raise
    return trackers


class RunMLflowTracker(MLflowTracker):
    """Accelerate's MLflow tracker for one run: logs to MLFLOW_TRACKING_URI when the user set it, else to a file store
    in the run folder (``RUN/mlruns``), and leaves MLflow's process-wide URI as it found it once the run finishes.
    Each MLflow run is tagged with its run folder, so that a resumed run (``resume``) finds and continues it."""

    _SCOPED = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")
    FOLDER_TAG = "tunelab.run_dir"

    def __init__(self, run_dir: Path, experiment_name: str, run_name: str, resume: bool = False) -> None:
        super().__init__(experiment_name=experiment_name, run_name=run_name)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        self.own_store = not os.environ.get("MLFLOW_TRACKING_URI")
        self.folder, self.resume = str(run_dir.resolve()), resume
        self._saved: dict[str, str | None] | None = None

    def start(self) -> None:
        import mlflow

        self._saved = {key: os.environ.get(key) for key in self._SCOPED}
        if self.own_store:  # MLflow 3 refuses a file store unless asked; the run folder's own store is asked for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.uri)
        try:
            if self.resume and self.run_id is None:
                self.run_id = self._earlier_run()
            super().start()
            mlflow.set_tag(self.FOLDER_TAG, self.folder)
        except BaseException:
            self._restore()
            raise

    def _earlier_run(self) -> str | None:
        """The MLflow run this run folder logged to before it was interrupted, if the store holds one."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{self.run_name}'")
        return next((run.info.run_id for run in runs if run.data.tags.get(self.FOLDER_TAG) == self.folder), None)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._restore()

    def _restore(self) -> None:
        """MLflow's URI and the environment as they were before ``start``."""
        if self._saved is None:
            return
        import mlflow

        mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI, which is put back below if it was set
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved = None


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
