"""FSDP2 under ``accelerate launch --use_fsdp --fsdp_version 2`` with two gloo processes on a CPU: the same final
weights as one process (full fine-tuning and LoRA), checkpoints that really hold one shard per process, and a run
killed after a sharded checkpoint that resumes to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import children, make_recipe
from tests.test_train import assert_close, launch_command, nodrop_bert_dir  # noqa: F401 (fixture)
from tunelab import api

LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def fsdp_command(*args: str) -> list[str]:
    return launch_command(["--use_fsdp", "--fsdp_version", "2"], *args)


def launch(*args: str) -> None:
    done = subprocess.run(fsdp_command(*args), env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = run_dir / "final"
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(folder / name)


def shards(step_dir: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(step_dir / f"model.rank{r}-of-2.safetensors") for r in range(2)]


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_fsdp2_two_processes_equal_one(tmp_path: Path, nodrop_bert_dir: Path, toy_csv: Path,  # noqa: F811
                                       strategy: str) -> None:
    """Same global batch, one process against FSDP2 over two: the same final model (final/ gathered, loadable)."""
    extra = {"strategy": LORA, "train": {"max_steps": 4, "eval_every": 2, "lr": 1e-2}} if strategy == "lora" else {
        "train": {"max_steps": 4, "eval_every": 2}}
    recipe = make_recipe(tmp_path, nodrop_bert_dir, toy_csv, **extra)
    single = api.train(recipe, name="single")
    launch(str(recipe), "--name", "fsdp")
    fsdp = tmp_path / "runs" / "fsdp"
    assert json.loads((fsdp / "summary.json").read_text())["processes"] == 2
    one, two = final_weights(single), final_weights(fsdp)
    # stated tolerance: the all-reduce and reduce-scatter sum the two halves of each batch in another order, so
    # float32 rounding differs (4 AdamW steps: about 4e-6 seen); a wrong shard or lost gradient is orders larger
    assert_close(one, two, atol=2e-5)
    start = load_file(nodrop_bert_dir / "model.safetensors")
    moved = {k: v for k, v in two.items() if "lora_B" in k} if strategy == "lora" else {
        "w": two["bert.encoder.layer.0.output.dense.weight"] - start["encoder.layer.0.output.dense.weight"]}
    assert moved and max(v.abs().max().item() for v in moved.values()) > 1e-4  # training really moved them
    # the step checkpoint holds one shard per process, which together are the one-process weights
    step = fsdp / "checkpoints" / "step-0000004"
    assert not (step / "model.safetensors").exists()
    rank0, rank1 = shards(step)
    reference = load_file(single / "checkpoints" / "step-0000004" / "model.safetensors")
    assert rank0.keys() == rank1.keys() == reference.keys()
    big = max(reference, key=lambda k: reference[k].numel())
    assert rank0[big].shape[0] < reference[big].shape[0]  # a shard, not a copy
    assert_close(reference, {k: torch.cat([rank0[k], rank1[k]]) for k in reference}, atol=2e-5)
    assert sorted(p.name for p in step.glob("optimizer.*.pt")) == ["optimizer.rank0-of-2.pt", "optimizer.rank1-of-2.pt"]


def test_fsdp2_killed_after_sharded_checkpoint_resumes_exactly(tmp_path: Path, nodrop_bert_dir: Path,  # noqa: F811
                                                               toy_csv: Path) -> None:
    """SIGKILL of the whole launch once step 4's sharded checkpoint is complete; the resumed FSDP2 run ends with the
    weights of the uninterrupted FSDP2 run, bit for bit (same processes, same order of sums)."""
    recipe = make_recipe(tmp_path, nodrop_bert_dir, toy_csv, train={"max_steps": 30, "eval_every": 4})
    launch(str(recipe), "--name", "whole")
    proc = subprocess.Popen(fsdp_command(str(recipe), "--name", "cut"), env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cut = tmp_path / "runs" / "cut"
    deadline = time.monotonic() + 240
    while not (cut / "checkpoints" / "step-0000004" / "manifest.json").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = children(proc.pid)  # torchrun starts each worker in a session of its own: kill them by id
    assert len(workers) == 2, workers
    for pid in [*workers, proc.pid]:
        os.kill(pid, signal.SIGKILL)  # no handler, no cleanup
    proc.wait()
    assert not (cut / "summary.json").exists(), "the kill must land while the run trains"
    assert not (cut / "checkpoints" / "step-0000030").exists()
    launch(str(cut), "--resume")
    assert_close(final_weights(whole := tmp_path / "runs" / "whole"), final_weights(cut), atol=0.0)
    rank0, rank1 = shards(cut / "checkpoints" / "step-0000030")
    reference0, reference1 = shards(whole / "checkpoints" / "step-0000030")
    assert_close(rank0, reference0, atol=0.0)
    assert_close(rank1, reference1, atol=0.0)


def test_fsdp2_refuses_the_frozen_feature_cache(tmp_path: Path, nodrop_bert_dir: Path,  # noqa: F811
                                                toy_csv: Path) -> None:
    """The cache runs part of the model outside the sharded forward: refused by its setting's name, not trained."""
    recipe = make_recipe(tmp_path, nodrop_bert_dir, toy_csv,
                         strategy={"method": "feature_extraction", "cache_features": True})
    done = subprocess.run(fsdp_command(str(recipe), "--name", "cached"), env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "strategy.cache_features" in done.stdout + done.stderr and "not supported under FSDP" in done.stdout + done.stderr
    assert not (tmp_path / "runs" / "cached" / "checkpoints").exists()
