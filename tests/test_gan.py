"""The GAN task and the loop's task-owned step with two optimisers: each update moves only its own network, a run
killed with SIGKILL resumes to the uninterrupted run's weights (both optimisers and schedules restored), NaN/inf
is handled per update as for every task, bad tables are named by row and column, and a run reports and samples."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.test_reliability import assert_same, losses, steps_saved, wait_until, weights
from tests.test_vae import table_rows, write_csv
from tunelab import api
from tunelab.cli import app
from tunelab.data.prepare import prepare_rows
from tunelab.errors import DataError, RunError
from tunelab.recipe import load_recipe
from tunelab.strategies.registry import make_strategy
from tunelab.tasks import build_task
from tunelab.tasks.gan import GANTask
from tunelab.train import checkpoint as ckpt
from tunelab.train.loop import Trainer

STEPS, EVERY = 12, 3


def labelled_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Two classes of the VAE tests' table: b = 2a ('ok') and b = -2a ('odd')."""
    return table_rows(n // 2, seed) + table_rows(n - n // 2, seed + 100, anomalous=True)


def gan_recipe(tmp_path: Path, train: dict[str, Any] | None = None, **task: Any) -> Path:
    data = write_csv(tmp_path / "table.csv", labelled_rows(160, 0))
    raw = {"name": "gan", "seed": 0, "model": {"name": "none"},
           "task": {"type": "gan", "input": "table", "conditional": True, "noise": 4, "generator_hidden": [16],
                    "discriminator_hidden": [16], "generator": {"lr": 2e-3}, "discriminator": {"lr": 1e-3},
                    **task},
           "data": {"train": str(data), "split": {"validation": 0.2, "test": 0.2}},
           "train": {"lr": 1e-3, "max_steps": STEPS, "eval_every": EVERY, "batch_size": 16, "warmup_ratio": 0.0,
                     "log_every": 1, **(train or {})},
           "eval": {"before": False},
           "output": {"dir": str(tmp_path / "runs"), "trackers": []}}
    path = tmp_path / "gan.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def trainer_for(tmp_path: Path, **task: Any) -> tuple[Trainer, GANTask]:
    recipe = load_recipe(gan_recipe(tmp_path, **task))
    gan = build_task(recipe)
    splits, _ = prepare_rows(recipe.data, gan, recipe.seed, None)
    torch.manual_seed(0)
    strategy = make_strategy(recipe.strategy, "gan")
    model = strategy.apply(gan.build_model())
    trainer = Trainer(recipe, gan, strategy, model, splits["train"], splits["validation"], tmp_path / "run",
                      Accelerator(cpu=True))
    return trainer, gan


def tensors(model: torch.nn.Module, net: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(net)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_update_moves_only_its_own_network(tmp_path: Path) -> None:
    trainer, gan = trainer_for(tmp_path, d_steps=2)
    model = trainer.model
    assert set(trainer.optimizers) == {"discriminator", "generator"}
    assert {g["lr"] for g in trainer.optimizers["generator"].param_groups} == {2e-3}
    assert trainer.optimizers["discriminator"].param_groups[0]["betas"] == (0.5, 0.999)
    trainer.stepper.begin(trainer.train_features[:16], 0, augment=True)
    g0, d0 = tensors(model, "generator"), tensors(model, "discriminator")
    trainer.stepper.update("discriminator", gan.d_loss_sum)
    g1, d1 = tensors(model, "generator"), tensors(model, "discriminator")
    assert same(g0, g1), "a discriminator update changed the generator"
    assert all(not torch.equal(d0[k], d1[k]) for k in d0), "the discriminator update left a tensor unchanged"
    assert all(p.grad is None for p in model.parameters()), "gradients left behind for the next update"
    trainer.stepper.update("generator", gan.g_loss_sum)
    g2, d2 = tensors(model, "generator"), tensors(model, "discriminator")
    assert same(d1, d2), "a generator update changed the discriminator"
    assert all(not torch.equal(g1[k], g2[k]) for k in g1), "the generator update left a tensor unchanged"
    assert all(p.grad is None for p in model.parameters())
    # d_steps=2: the first loop step updates the discriminator only, the second both
    terms = trainer.step(list(range(16)))
    assert same(g2, tensors(model, "generator")) and "g_loss" not in trainer.terms and terms == trainer.terms["d_loss"]
    trainer.state.step = 1
    trainer.step(list(range(16, 32)))
    assert not same(g2, tensors(model, "generator")) and "g_loss" in trainer.terms
    assert set(trainer.rates()) == {"lr", "lr_discriminator", "lr_generator"}


def test_a_gan_run_reports_synthetic_quality_and_samples(tmp_path: Path) -> None:
    run = api.train(gan_recipe(tmp_path, train={"max_steps": 40, "eval_every": 20}), name="table")
    test = run.summary["after"]["test"]
    assert {"detection", "tstr_accuracy", "real_accuracy", "nearer_train_share", "wasserstein_mean"} <= set(test)
    assert 0.0 <= test["detection"] <= 1.0 and [c["column"] for c in test["columns"]] == ["a", "b", "c"]
    assert run.summary["best"]["metric"] == "detection"
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## Synthetic data (test)" in report and "Train on synthetic, test on real" in report
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train_d_loss", "train_g_loss", "lr_generator", "lr_discriminator"} <= set(records[0])
    assert run.evaluate("test")["detection"] == pytest.approx(test["detection"])  # final/ reloads as trained
    out = tmp_path / "synth.csv"
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 40 and list(rows[0]) == ["a", "b", "c", "label"] and {r["label"] for r in rows} <= {"ok", "odd"}
    score = CliRunner().invoke(app, ["score", str(run), str(out)])
    assert score.exit_code == 2 and "score needs a run of task.type vae" in score.output


def test_image_gan_writes_a_sample_grid_and_png_folders(tmp_path: Path) -> None:
    recipe = gan_recipe(tmp_path, input="image", image_size=8, architecture="conv", generator_hidden=[8],
                        discriminator_hidden=[8], train={"max_steps": 4, "eval_every": 4})
    raw = yaml.safe_load(recipe.read_text())
    raw["data"] = {"dataset": "digits", "limit": 100}
    raw["eval"]["max_examples"] = 30
    recipe.write_text(yaml.safe_dump(raw))
    run = api.train(recipe, name="digits")
    assert run.summary["figures"] == {"samples": "plots/samples.png"} and (run / "plots" / "samples.png").is_file()
    assert "![samples](plots/samples.png)" in (run / "report.md").read_text(encoding="utf-8")
    out = tmp_path / "pngs"
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*/*.png"))) == 12 and {p.parent.name for p in out.glob("*/*.png")} <= set("0123456789")


def test_sigkill_mid_training_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Two SIGKILLs of a real GAN training process (the first while a checkpoint is being written, the second at a
    seeded random point after the resumed process checkpointed): the final weights equal the uninterrupted run's
    bit for bit, which needs both optimisers' moments and both schedules back."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    whole = api.train(gan_recipe(tmp_path / "a", train={"keep_checkpoints": 100}), name="whole")
    saved = ckpt.load_checkpoint(whole / "checkpoints" / f"step-{EVERY:07d}")[1]
    assert {"optimizer.generator", "optimizer.discriminator", "scheduler.generator", "scheduler.discriminator",
            "rng"} <= set(saved)
    recipe = gan_recipe(tmp_path / "b")
    run = tmp_path / "b" / "runs" / "X"
    step_seconds = json.loads((whole / "summary.json").read_text())["train_seconds"] / STEPS
    rng = random.Random(14)
    for trial in range(2):
        args = [str(recipe), "--name", "X"] if trial == 0 else [str(run), "--resume"]
        before = max(steps_saved(run), default=0)
        with open(tmp_path / f"trial-{trial}.log", "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", *args], stdout=out, stderr=out)
        if trial == 0:
            wait_until(lambda: any((run / "checkpoints").glob(".step-*.tmp")), proc, poll=0.001)
        else:
            wait_until(lambda: max(steps_saved(run), default=0) > before, proc)
            time.sleep(rng.uniform(0.0, EVERY) * step_seconds)
        assert proc.poll() is None or trial > 0, "the first kill must hit a live, training process"
        proc.kill()
        proc.wait()
        for step in steps_saved(run):
            assert_same(weights(run, step), weights(whole, step), f"trial {trial}, step {step}")
        if (run / "summary.json").exists():
            break
    if not (run / "summary.json").exists():
        result = CliRunner().invoke(app, ["train", str(run), "--resume"])
        assert result.exit_code == 0, result.output[-2000:]
    assert_same(weights(run, STEPS), weights(whole, STEPS), "final weights")
    assert losses(run) == losses(whole)


def test_nan_in_a_gan_update_stops_or_is_skipped_as_for_every_task(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plain = GANTask.g_loss_sum

    def poisoned(self: GANTask, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return plain(self, model, batch) * float("nan")  # a generator loss gone bad, as a blown-up net gives

    monkeypatch.setattr(GANTask, "g_loss_sum", poisoned)
    with pytest.raises(RunError, match=r"training loss became nan in the generator update at step 1 \(epoch 0, "
                                       r"batch 0 of it\); no checkpoint was written yet"):
        api.train(gan_recipe(tmp_path), name="stop")
    run = api.train(gan_recipe(tmp_path, train={"on_nan": "skip", "max_steps": 6, "eval_every": 3,
                                                "keep_checkpoints": 10}), name="skip")
    assert run.summary["skipped_steps"] == 6 and run.summary["steps"] == 6
    first, last = weights(run, 3), weights(run, 6)
    generator = [k for k in first if k.startswith("generator.")]
    assert generator and all(torch.equal(first[k], last[k]) for k in generator)  # skipped: never moved
    assert all(torch.isfinite(t).all() for t in last.values())
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("discriminator."))
    start = load_file(run / "final" / "model.safetensors")
    assert np.isfinite(np.concatenate([t.flatten().numpy() for t in start.values()])).all()


def test_bad_table_cells_are_named_by_line_and_column(tmp_path: Path) -> None:
    rows = labelled_rows(40, 0)
    rows[2]["a"] = ""  # line 4
    rows[5]["c"] = "12,5"  # line 7
    data = write_csv(tmp_path / "bad.csv", rows)
    recipe = load_recipe(gan_recipe(tmp_path))
    recipe.data.train = str(data)
    with pytest.raises(DataError) as err:
        prepare_rows(recipe.data, build_task(recipe), recipe.seed, None)
    assert "bad.csv, line 4: column 'a' has no value" in str(err.value)
    assert "bad.csv, line 7: column 'c' holds '12,5', not a finite number" in str(err.value)
