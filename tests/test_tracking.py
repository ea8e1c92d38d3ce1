"""Experiment tracking is tested by reading what the trackers wrote: TensorBoard event files in the run folder, and
the MLflow file store read back with MLflow's own client (no tracker is mocked)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboardX.proto import event_pb2

from tests.conftest import interrupt_after, make_recipe
from tunelab import api
from tunelab.errors import RecipeError, RunError
from tunelab.recipe import load_recipe
from tunelab.tracking import _flat


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TFRecord event files under ``folder``: tag -> [(step, value)]."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    for path in files:
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4  # length, its CRC, the record, the record's CRC
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_every_run_folder_gets_a_tensorboard_event_file(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    run = api.train(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 6, "eval_every": 3,
                                                                        "log_every": 1}), name="tracked")
    scalars = read_scalars(run / "tensorboard")
    logged = [r for r in (run / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in r]
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 7)) and len(logged) == 6
    assert [step for step, _ in scalars["validation/accuracy"]] == [3, 6]
    assert all(0.0 <= value <= 1.0 for _, value in scalars["validation/accuracy"])


def test_no_tracker_when_the_recipe_says_none(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    run = api.train(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 2},
                                output={"trackers": []}), name="untracked")
    assert not (run / "tensorboard").exists()


def test_a_tracker_whose_package_is_missing_is_named(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    with pytest.raises(RecipeError, match="output.trackers: 'wandb' needs the package wandb"):
        api.train(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 2},
                              output={"trackers": ["wandb"]}), name="wandb")
    assert not (tmp_path / "runs" / "wandb").exists()  # refused before any work


def metrics_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def mlflow_runs(uri: str) -> list:
    """Every MLflow run in the store at ``uri``, read back with MLflow's own client."""
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


@pytest.fixture
def clean_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)


def test_mlflow_file_store_holds_the_recipe_and_every_metric_of_metrics_jsonl(
        tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path, clean_mlflow_env: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = api.train(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 6, "eval_every": 3, "log_every": 1},
                                output={"trackers": ["tensorboard", "mlflow"]}), name="both")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # nothing leaks
    assert read_scalars(run / "tensorboard")["train/loss"]  # both trackers wrote
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's client reads a file store only when asked
    uri = (run / "mlruns").as_uri()
    (found,) = mlflow_runs(uri)
    assert found.info.status == "FINISHED" and found.info.run_name == "both"
    recipe = load_recipe(run / "recipe.yaml").model_dump(mode="json")
    assert found.data.params == {key: str(value) for key, value in _flat(recipe).items()}
    assert found.data.params["train.max_steps"] == "6" and found.data.params["model.name"] == str(tiny_bert_dir)
    records = metrics_records(run)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    validation = [(r["step"], r["accuracy"]) for r in records if r.get("split") == "validation"]
    assert [step for step, _ in train] == list(range(1, 7)) and [step for step, _ in validation] == [3, 6]
    assert history(uri, found.info.run_id, "train/loss") == train  # the same floats, exactly
    assert history(uri, found.info.run_id, "validation/accuracy") == validation
    assert history(uri, found.info.run_id, "validation/loss") == [
        (r["step"], r["loss"]) for r in records if r.get("split") == "validation"]


def test_each_run_in_one_process_logs_to_its_own_store_unless_the_user_names_one(
        tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path, clean_mlflow_env: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 2, "eval_every": 2},
                         output={"trackers": ["mlflow"]})
    first, second = api.train(recipe, name="first"), api.train(recipe, name="second")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for run in (first, second):  # the second run did not log into the first run's folder (MLflow's URI is global)
        assert [r.info.run_name for r in mlflow_runs((run / "mlruns").as_uri())] == [run.name]
    shared = (tmp_path / "shared-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)  # the user's own store wins, and stays theirs afterwards
    third = api.train(recipe, name="third")
    assert os.environ["MLFLOW_TRACKING_URI"] == shared and not (third / "mlruns").exists()
    assert [r.info.run_name for r in mlflow_runs(shared)] == ["third"]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path,
                                                clean_mlflow_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 6, "eval_every": 3, "log_every": 1},
                         output={"trackers": ["mlflow"]})
    plain_steps = interrupt_after(monkeypatch, 3)  # Ctrl-C in step 4: checkpointed there, so no step is redone
    with pytest.raises(RunError, match="interrupted at step 4"):
        api.train(recipe, name="cut")
    plain_steps()
    run = api.train(tmp_path / "runs" / "cut", resume=True)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (run / "mlruns").as_uri()
    (found,) = mlflow_runs(uri)  # one MLflow run, not one per process
    assert found.info.status == "FINISHED"
    train = [(r["step"], r["train_loss"]) for r in metrics_records(run) if "train_loss" in r]
    assert [step for step, _ in train] == list(range(1, 7))
    assert history(uri, found.info.run_id, "train/loss") == train
