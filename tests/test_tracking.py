"""Experiment tracking is tested by reading what the trackers wrote: TensorBoard event files in the run folder."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from tests.conftest import make_recipe
from tunelab import api
from tunelab.errors import RecipeError


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
