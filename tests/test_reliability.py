"""Crash safety, exact resume after SIGKILL, numerical faults, and safe loading.

The headline test kills a real ``tunelab train`` process with SIGKILL at seeded random points, resumes it each
time, and checks every checkpoint left behind and the final weights against a run never interrupted, bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import make_recipe, toy_rows
from tunelab import api
from tunelab.cli import app
from tunelab.errors import RunError
from tunelab.recipe import load_recipe
from tunelab.runfolder import MetricsLog, checkpoint_bytes, new_run_dir, require_free_space
from tunelab.train import checkpoint as ckpt

STEPS, EVERY = 12, 3  # a checkpoint every 3 steps, 4 in all


def write_csv(folder: Path) -> Path:
    path = folder / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(toy_rows(160))
    return path


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def losses(run: Path) -> list[tuple[int, float]]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def steps_saved(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in ckpt.complete_checkpoints(run / "checkpoints")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reliability")
    write_csv(folder)
    return folder


@pytest.fixture(scope="module")
def reference(data_dir: Path, tiny_bert_dir: Path) -> Path:
    """The uninterrupted run, keeping every checkpoint so any step can be compared."""
    folder = data_dir / "reference"
    folder.mkdir()
    recipe = make_recipe(folder, tiny_bert_dir, data_dir / "reviews.csv",
                         train={"max_steps": STEPS, "eval_every": EVERY, "log_every": 1, "keep_checkpoints": 100})
    return api.train(recipe, name="whole")


# ---- SIGKILL at random points, then resume ---------------------------------------------------------------------

def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and proc.poll() is None:
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(poll)


def kill_three_times_then_resume(folder: Path, recipe: Path, whole: Path, steps: int, every: int) -> list[dict]:
    """Train ``recipe`` as run ``folder/runs/X`` in a real ``tunelab train`` process and SIGKILL it three times: the
    first as soon as a checkpoint is being written (its hidden temporary folder appears), the others at seeded random
    points after the resumed process wrote a new checkpoint; resume after each. Every kill must hit a live process,
    everything a kill leaves behind must verify and equal ``whole`` (the same recipe run uninterrupted, keeping every
    checkpoint), and the end must equal ``whole`` bit for bit: weights, logged losses, step count. Returns the
    trials."""
    run = folder / "runs" / "X"
    rng = random.Random(20261122)
    step_seconds = json.loads((whole / "summary.json").read_text())["train_seconds"] / steps
    trials: list[dict] = []
    for trial in range(3):
        args = [str(recipe), "--name", "X"] if trial == 0 else [str(run), "--resume"]
        before = max(steps_saved(run), default=0)
        with open(folder / f"trial-{trial}.log", "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", *args], cwd=folder, stdout=out, stderr=out)
        if trial == 0:  # during a checkpoint write: the moment its temporary folder exists
            wait_until(lambda: any((run / "checkpoints").glob(".step-*.tmp")), proc, poll=0.001)
        else:  # a random point after the resumed process wrote its first new checkpoint: before, between or during
            wait_until(lambda: max(steps_saved(run), default=0) > before, proc)
            time.sleep(rng.uniform(0.0, every) * step_seconds)
        finished_first = proc.poll() is not None
        writing = any((run / "checkpoints").glob(".step-*.tmp"))
        proc.kill()  # SIGKILL: no handler, no cleanup, no flush
        proc.wait()
        trials.append({"trial": trial, "checkpoints": steps_saved(run), "finished": finished_first,
                       "mid_write": writing})
        assert not finished_first or (run / "summary.json").exists(), f"the process died by itself: {trials}"
        for step in steps_saved(run):  # everything a kill leaves behind verifies and equals the reference
            ckpt.verify(run / "checkpoints" / f"step-{step:07d}")
            assert_same(weights(run, step), weights(whole, step), f"after kill {trials[-1]}, step {step}")
        if (run / "summary.json").exists():
            break
    assert not trials[0]["finished"], "the first kill must land while the run trains"
    finished = (run / "summary.json").exists()  # the last kill may land after the run wrote its summary
    resumed = CliRunner().invoke(app, ["train", str(run), "--resume"])
    if finished:
        assert resumed.exit_code == 2 and "already finished" in resumed.output
    else:
        assert resumed.exit_code == 0, f"{trials}\n{resumed.output[-3000:]}"
    assert_same(weights(run, steps), weights(whole, steps), f"final weights after kills {trials}")
    assert losses(run) == losses(whole)
    assert not list((run / "checkpoints").glob(".step-*")), "a torn temporary folder was left behind"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == steps and summary["skipped_steps"] == 0
    again = CliRunner().invoke(app, ["train", str(run), "--resume"])  # a finished run says so, and trains nothing
    assert again.exit_code == 2 and "already finished" in again.output
    return trials


KILL_VARIANTS = {  # strategy and train sections over the default full fine-tuning: each state a resume must restore
    "full": ({}, {}),
    "lora": ({"method": "lora", "r": 4}, {}),
    "gradual_unfreeze": ({"method": "gradual_unfreeze", "every_steps": 2}, {}),
    "feature_cache": ({"method": "feature_extraction", "cache_features": True}, {}),
    "grad_accum": ({}, {"grad_accum": 2}),
}


@pytest.mark.parametrize("variant", list(KILL_VARIANTS))
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(data_dir: Path, tiny_bert_dir: Path, variant: str,
                                                                     reference: Path) -> None:
    """Three SIGKILLs of a real training process: the first as soon as a checkpoint is being written (its hidden
    temporary folder appears), the others at seeded random points; every kill must hit a live process."""
    strategy, train = KILL_VARIANTS[variant]
    folder = data_dir / f"killed-{variant}"
    folder.mkdir()
    sections = {"strategy": strategy} if strategy else {}
    settings = {"max_steps": STEPS, "eval_every": EVERY, "log_every": 1} | train
    if variant == "full":
        whole = reference
    else:
        whole = api.train(make_recipe(folder, tiny_bert_dir, data_dir / "reviews.csv", **sections,
                                      train=settings | {"keep_checkpoints": 100}), name="whole")
    recipe = make_recipe(folder, tiny_bert_dir, data_dir / "reviews.csv", **sections,
                         train=settings | {"keep_checkpoints": 2})
    trials = kill_three_times_then_resume(folder, recipe, whole, STEPS, EVERY)
    print(f"\nSIGKILL trials ({variant}): {trials}")


# ---- the states a kill can leave, built exactly -------------------------------------------------------------------

def test_resume_before_first_checkpoint_starts_over_in_the_same_folder(tmp_path: Path, reference: Path) -> None:
    """A kill after the run folder exists but before any checkpoint: a torn temporary checkpoint, log lines of the
    lost steps and a half-written last line. Resume starts over in place and ends as the uninterrupted run."""
    run = tmp_path / "early"
    (run / "checkpoints" / ".step-0000003.tmp").mkdir(parents=True)
    (run / "checkpoints" / ".step-0000003.tmp" / "model.safetensors").write_bytes(os.urandom(1000))
    shutil.copy(reference / "recipe.yaml", run / "recipe.yaml")
    (run / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.5}\n{"step": 2, "train_lo')
    api.train(run, resume=True)
    assert_same(weights(run, STEPS), weights(reference, STEPS), "resumed from nothing")
    assert losses(run) == losses(reference)
    assert not (run / "checkpoints" / ".step-0000003.tmp").exists()


def test_resume_of_a_finished_run_changes_nothing(reference: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    with pytest.raises(RunError, match="already finished"):
        api.train(reference, resume=True)
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: x}}\ndata: {{train: x.csv}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    with pytest.raises(RunError, match="runs/nothing: no such run folder"):
        api.train(recipe, name="nothing", resume=True)


def test_a_checkpoint_that_does_not_match_its_manifest_is_refused(tmp_path: Path, reference: Path) -> None:
    run = tmp_path / "bad"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "recipe.yaml", run / "recipe.yaml")
    shutil.copytree(reference / "checkpoints" / f"step-{STEPS:07d}", run / "checkpoints" / f"step-{STEPS:07d}")
    tensors = run / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    tensors.write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"model.safetensors: does not match the checkpoint manifest"):
        api.train(run, resume=True)
    assert not (run / "final").exists()


class Payload:
    """Unpickling this creates a file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_checkpoints_load_tensors_only_never_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    folder = tmp_path / "checkpoints" / "step-0000001"
    ckpt.save_checkpoint(folder, {"w": torch.ones(2)}, {"optimizer": Payload(marker)}, {"step": 1})
    ckpt.verify(folder)  # the manifest matches: only the loader stands between the payload and this machine
    with pytest.raises(RunError, match="cannot be read"):
        ckpt.load_checkpoint(folder)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # and the reason is weights_only, not a damaged file
        torch.load(folder / "optimizer.pt", weights_only=True)


def test_checkpoint_manifest_must_list_exactly_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "step-0000002"
    ckpt.save_checkpoint(folder, {"w": torch.zeros(3)}, {"rng": ckpt.rng_state()}, {"step": 2})
    tensors, objects, state = ckpt.load_checkpoint(folder)
    assert torch.equal(tensors["w"], torch.zeros(3)) and state == {"step": 2} and "rng" in objects
    (folder / "extra.pt").write_bytes(b"")
    with pytest.raises(RunError, match="not those its manifest lists"):
        ckpt.verify(folder)
    (folder / "extra.pt").unlink()
    (folder / ckpt.MANIFEST).unlink()
    with pytest.raises(RunError, match="incomplete checkpoint"):
        ckpt.verify(folder)


def test_torn_and_stray_checkpoint_folders_are_ignored_then_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (3, 6):
        ckpt.save_checkpoint(root / f"step-{step:07d}", {"w": torch.full((2,), float(step))}, {}, {"step": step})
    (root / ".step-0000009.tmp").mkdir()  # a write killed before its rename
    (root / ".step-0000003.del").mkdir()  # a delete killed after its rename
    (root / "step-0000012").mkdir()  # no manifest: never finished
    (root / "step-latest").mkdir()  # not ours
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["step-0000003", "step-0000006"]
    ckpt.prune(root, keep=1, protect={"step-0000003"})  # the best is kept even when old
    assert sorted(p.name for p in root.iterdir()) == ["step-0000003", "step-0000006", "step-0000012", "step-latest"]
    ckpt.prune(root, keep=1, protect=set())
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["step-0000006"]


def test_metrics_log_drops_a_torn_last_line_and_refuses_damage_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 0.7}\n{"step": 2, "train_loss": 0.6}\n{"step": 3, "tra')
    log = MetricsLog(path)
    assert [r["step"] for r in log.records] == [1, 2]
    log.truncate_after(1)
    assert path.read_text() == '{"step": 1, "train_loss": 0.7}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(RunError, match="line 2: not a JSON record"):
        MetricsLog(path)


# ---- numerical faults ------------------------------------------------------------------------------------------

def test_nan_loss_stops_naming_step_batch_and_last_good_checkpoint(tmp_path: Path, tiny_bert_dir: Path,
                                                                     toy_csv: Path) -> None:
    """lr=1e6 blows the tiny model's weights up in one AdamW step; the next loss is NaN."""
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"lr": 1e6, "max_steps": 4, "eval_every": 1})
    with pytest.raises(RunError, match=r"training loss became nan at step 2 \(epoch 0, batch 1 of it\); "
                                       r"the last good checkpoint is .*step-0000001"):
        api.train(recipe, name="nan")
    run = tmp_path / "runs" / "nan"
    assert steps_saved(run) == [1] and not (run / "summary.json").exists()
    ckpt.verify(run / "checkpoints" / "step-0000001")
    assert all(torch.isfinite(t).all() for t in weights(run, 1).values())


def test_on_nan_skip_skips_the_optimiser_step_and_counts_it(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"lr": 1e6, "max_steps": 4, "eval_every": 1,
                                                                  "keep_checkpoints": 10, "on_nan": "skip"})
    run = api.train(recipe, name="skip")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["steps"] == 4
    for step in (2, 3, 4):  # skipped steps leave the weights exactly as they were, and finite
        assert_same(weights(run, step), weights(run, 1), f"step {step}")
    assert all(torch.isfinite(t).all() for t in weights(run, 4).values())


# ---- the run folder and the disk -------------------------------------------------------------------------------

def test_unwritable_output_folder_is_a_clear_error_before_training(tmp_path: Path, tiny_bert_dir: Path,
                                                                    toy_csv: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, output={"dir": str(blocker / "runs")})
    with pytest.raises(RunError, match=r"cannot write the run folder .*a-file/runs/x.*choose output.dir elsewhere"):
        api.train(recipe, name="x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_output_folder_is_a_clear_error(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, output={"dir": str(locked)})
    with pytest.raises(RunError, match="cannot write the run folder"):
        new_run_dir(load_recipe(recipe), "x", overwrite=False)


def test_too_little_disk_is_refused_before_training(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(RunError, match=r"MiB free on the disk of .*this run needs about"):
        require_free_space(tmp_path / "runs" / "not-yet", free + 2**30)
    require_free_space(tmp_path / "runs" / "not-yet", 1)
    # 10 trainable of 100 parameters, keep 2: weights + 2 AdamW moments in 4 checkpoints, and the final model
    assert checkpoint_bytes(trainable=10, total=100, keep=2) == 4 * (3 * 10 * 4 + 100)


def test_run_folder_appears_whole_or_not_at_all(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv))
    stale = tmp_path / "runs" / ".a.new"  # a creation killed half way
    stale.mkdir(parents=True)
    run = new_run_dir(recipe, "a", overwrite=False)
    assert load_recipe(run / "recipe.yaml") == recipe and not stale.exists()
    (run / "old-result").write_text("x")
    again = new_run_dir(recipe, "a", overwrite=True)
    assert sorted(p.name for p in again.iterdir()) == ["recipe.yaml"]
    assert sorted(p.name for p in again.parent.iterdir()) == ["a"]


# ---- safe loading ----------------------------------------------------------------------------------------------

SRC = Path(__file__).resolve().parent.parent / "src" / "tunelab"


def test_no_unsafe_deserialisation_anywhere_in_the_code() -> None:
    """Only safetensors or torch.load(weights_only=True); no pickle; trust_remote_code never forced on."""
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), path
        assert not re.search(r"trust_remote_code\s*=\s*True\s*[,)]", text), path  # as an argument, not in a message


def test_trust_remote_code_is_off_unless_the_recipe_sets_it_and_then_warns(tmp_path: Path, tiny_bert_dir: Path,
                                                                             toy_csv: Path) -> None:
    from tunelab.models import load_tokenizer

    recipe = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv))
    assert recipe.model.trust_remote_code is False
    with pytest.warns(UserWarning, match="trust_remote_code=True: Python code shipped with"):
        load_tokenizer(str(tiny_bert_dir), trust_remote_code=True)


def test_a_full_disk_is_a_clear_error_and_spares_earlier_checkpoints(tmp_path: Path) -> None:
    """A real failing write: the file-size limit (RLIMIT_FSIZE) makes the OS refuse writes past 1 MiB, as a full
    disk would. The checkpoint written before stays whole, and no temporary folder is left."""
    import resource
    import signal

    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root / "step-0000001", {"w": torch.zeros(1000)}, {}, {"step": 1})
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, limits[1]))
    try:
        with pytest.raises(RunError, match=r"cannot write the checkpoint step-0000002 .*earlier checkpoints are untouched"):
            ckpt.save_checkpoint(root / "step-0000002", {"w": torch.zeros(2**20)}, {}, {"step": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001"]
    ckpt.verify(root / "step-0000001")


def test_a_sampled_held_out_split_is_reported_beside_its_full_size(tmp_path: Path, tiny_bert_dir: Path,
                                                                     toy_csv: Path) -> None:
    """eval.max_examples used to keep the first rows and say nothing: summary.json and report.md give the evaluated
    size beside the split's full size, and the evaluated figures are on that many rows."""
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, eval={"max_examples": 10}, train={"max_steps": 2})
    run = api.train(recipe, name="sampled")
    summary = json.loads((run / "summary.json").read_text())
    report = (run / "report.md").read_text()
    for split in ("validation", "test"):  # 160 rows, 20% each: 32 held-out rows per split, 10 evaluated
        reason = (f"{split}: left out by eval.max_examples=10 (a seeded sample stratified by label; 10 of the "
                  f"split's 32 rows evaluated)")
        assert summary["data"]["skipped"][reason] == 22 and summary["data"]["rows"][split] == 10
        assert summary["after"][split]["n"] == 10
        assert reason in report
