"""data.augment: a tiny conditional GAN trained on the digits adds exactly N class-balanced synthetic images to an
image classifier's training split only (validation and test unchanged), the summary says so, and a run that is not
class-conditional generative, or whose labels differ from the recipe's, is refused by name."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.test_vision_task import COLOURS, draw
from tunelab import api
from tunelab.errors import DataError
from tunelab.recipe import load_recipe
from tunelab.run import Run
from tunelab.tasks import build_task

N = 30  # synthetic rows: 3 per digit


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("gan")
    raw = {"name": "gan", "seed": 0, "model": {"name": "none"},
           "task": {"type": "gan", "input": "image", "image_size": 8, "conditional": True, "architecture": "mlp",
                    "noise": 4, "generator_hidden": [16], "discriminator_hidden": [16]},
           "data": {"dataset": "digits", "limit": 100},
           "train": {"lr": 1e-3, "max_steps": 4, "eval_every": 4, "batch_size": 16, "warmup_ratio": 0.0},
           "eval": {"before": False, "max_examples": 30},
           "output": {"dir": str(root / "runs"), "trackers": []}}
    return api.train(write(root / "gan.yaml", raw), name="digits-gan")


def classifier(tmp_path: Path, run: Path | str | None, data: dict[str, Any] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = {"name": "img", "seed": 0, "model": {"name": "test_efficientnet"},
           "task": {"type": "image_classification", "pretrained": False, "image_size": 32, "hflip": False},
           "data": data or {"dataset": "digits", "limit": 50, "split": {"validation": 0.15, "test": 0.25}},
           "train": {"lr": 3e-3, "max_steps": 2, "batch_size": 16, "eval_every": 2, "warmup_ratio": 0.0},
           "eval": {"before": False, "batch_size": 64},
           "output": {"dir": str(tmp_path / "runs"), "trackers": []}}
    if run is not None:
        raw["data"]["augment"] = {"run": str(run), "n": N}
    return write(tmp_path / "img.yaml", raw)


def test_augment_adds_n_balanced_rows_to_train_only(tmp_path: Path, gan_run: Run) -> None:
    recipe = load_recipe(classifier(tmp_path, gan_run))
    plain = api.prepare_data(recipe.model_copy(update={"data": recipe.data.model_copy(update={"augment": None})}),
                             build_task(recipe))
    task = build_task(recipe)
    augmented = api.prepare_data(recipe, task)
    real, both = plain.splits, augmented.splits
    assert len(both["train"]) == len(real["train"]) + N and len(real["train"]) == 50
    ids = lambda features: [(f["image_id"], f["label"]) for f in features]  # noqa: E731
    assert ids(both["train"][:50]) == ids(real["train"])  # the real rows first, untouched
    fingerprints = api.split_fingerprints(both), api.split_fingerprints(real)
    assert all(fingerprints[0][name] == fingerprints[1][name] for name in ("validation", "test"))
    assert fingerprints[0]["train"] != fingerprints[1]["train"]
    added = both["train"][50:]
    assert Counter(task.label_names[f["label"]] for f in added) == {str(d): 3 for d in range(10)}
    real_shape = real["train"][0]["pixels"].shape  # decoded as the real digits are (8x8, to RGB)
    assert real_shape[:2] == (8, 8) and all(f["pixels"].shape == real_shape for f in added)
    assert all(f["pixels"].dtype == np.uint8 and (f["pixels"][..., 0] == f["pixels"][..., -1]).all() for f in added)
    assert len({f["image_id"] for f in added}) == N  # drawn, not one image repeated
    report = augmented.report
    assert report.rows["train"] == 50 + N and report.synthetic["rows"] == N
    assert report.synthetic["real_train_rows"] == 50 and report.synthetic["run"] == str(gan_run)

    run = api.train(classifier(tmp_path, gan_run), name="augmented")
    data = run.summary["data"]
    assert data["rows"]["train"] == 50 + N and data["rows"]["validation"] == plain.report.rows["validation"]
    assert data["synthetic"] == {"run": str(gan_run), "rows": N, "seed": 0, "real_train_rows": 50,
                                 "per_class": {str(d): 3 for d in range(10)}}


def test_a_run_that_is_not_conditional_generative_is_refused(tmp_path: Path, gan_run: Run) -> None:
    run = api.train(classifier(tmp_path / "a", None), name="classifier")
    with pytest.raises(DataError, match=r"is a run of task.type image_classification; augmentation needs a "
                                        r"class-conditional generative run"):
        api.train(classifier(tmp_path / "b", run), name="b")


def test_labels_that_differ_are_refused_naming_both_sets(tmp_path: Path, gan_run: Run) -> None:
    folder = tmp_path / "colours"
    for label, colour in COLOURS.items():
        (folder / label).mkdir(parents=True)
        for i in range(6):
            draw(colour, i).save(folder / label / f"{i}.png")
    recipe = classifier(tmp_path, gan_run, {"train": str(folder), "split": {"validation": 0.2, "test": 0.2}})
    with pytest.raises(DataError) as err:
        api.train(recipe, name="colours")
    assert "draws the labels ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']" in str(err.value)
    assert "this recipe's labels are ['blue', 'green', 'red']" in str(err.value)
