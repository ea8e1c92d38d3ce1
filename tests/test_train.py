"""The training loop's promises: accumulation equals a bigger batch, exact resume, two processes equal one,
and final/ reloads in plain transformers with identical logits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import children, interrupt_after, make_recipe
from tunelab import api
from tunelab.errors import RunError
from tunelab.train.checkpoint import complete_checkpoints


@pytest.fixture(scope="module")
def nodrop_bert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """The tiny BERT without dropout: equivalence tests need the same function however the batch is split."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    folder = tmp_path_factory.mktemp("tiny-bert-nodrop")
    model = BertModel.from_pretrained(tiny_bert_dir, config=config)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert_dir / name).exists():
            (folder / name).write_bytes((tiny_bert_dir / name).read_bytes())
    return folder


def step_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest difference {worst} > {atol}"


def test_accumulation_equals_bigger_batch(tmp_path: Path, nodrop_bert_dir: Path, toy_csv: Path) -> None:
    one = api.train(make_recipe(tmp_path, nodrop_bert_dir, toy_csv), name="one")
    four = api.train(make_recipe(tmp_path, nodrop_bert_dir, toy_csv, train={"grad_accum": 4}), name="four")
    # float32 sums in another order: 3.6e-6 on an AVX-512 CPU (under 2e-6 on AVX2 ones), against 3.5e-3 that the
    # weights moved and 6.2e-3 between stepping after each micro-batch of 2 and after 4 of them (measured 2026-12-01)
    assert_close(step_weights(one, 6), step_weights(four, 6), atol=2e-5)
    # and the weights really moved, so the comparison means something
    start = load_file(nodrop_bert_dir / "model.safetensors")
    assert (step_weights(one, 6)["bert.encoder.layer.0.output.dense.weight"]
            - start["encoder.layer.0.output.dense.weight"]).abs().max() > 1e-4


def test_resume_after_ctrl_c_equals_uninterrupted(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 8, "eval_every": 2})
    whole = api.train(recipe, name="whole")

    plain_steps = interrupt_after(monkeypatch, 4)  # the 5th step is in hand: Ctrl-C now
    with pytest.raises(RunError, match="interrupted at step 5"):
        api.train(recipe, name="cut")
    plain_steps()
    cut = tmp_path / "runs" / "cut"
    assert (cut / "checkpoints" / "step-0000005" / "manifest.json").is_file()
    api.train(cut, resume=True)
    assert_close(step_weights(whole, 8), step_weights(cut, 8), atol=0.0)
    losses = lambda run: [r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]  # noqa: E731
    assert losses(whole) == losses(cut)


def test_final_folder_reloads_in_plain_transformers(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = api.train(make_recipe(tmp_path, tiny_bert_dir, toy_csv), name="reload")
    texts = ["a great and charming film", "dull, boring and flat"]
    loaded = api.load(run)
    ours = loaded.predict(loaded.model, texts)
    plain = AutoModelForSequenceClassification.from_pretrained(run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    with torch.no_grad():
        logits = plain(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    assert [plain.config.id2label[i] for i in logits.argmax(-1).tolist()] == [r["label"] for r in ours]
    probs = torch.tensor([[r["scores"][n] for n in loaded.label_names] for r in ours])
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)
    assert set(plain.config.id2label.values()) == {"neg", "pos"}


def test_existing_run_folder_is_never_overwritten(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 1})
    api.train(recipe, name="keep")
    marker = tmp_path / "runs" / "keep" / "summary.json"
    before = marker.read_bytes()
    with pytest.raises(RunError, match="already exists"):
        api.train(recipe, name="keep")
    assert marker.read_bytes() == before


def free_port() -> int:
    """A port nothing listens on now (a fixed one collides with another run of the suite on the same machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(distributed: list[str], *args: str) -> list[str]:
    """``accelerate launch`` of ``tunelab train ARGS`` on 2 local processes, in the mode ``distributed`` names."""
    return [sys.executable, "-m", "accelerate.commands.launch", *distributed, "--num_processes", "2", "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "tunelab", "train", *args]


def ddp_command(recipe: Path, *args: str) -> list[str]:
    return launch_command(["--multi_gpu"], str(recipe), *args)


def test_two_processes_equal_one(tmp_path: Path, nodrop_bert_dir: Path, toy_csv: Path) -> None:
    """accelerate launch --multi_gpu --num_processes 2 (torchrun + gloo on CPU) with the same global batch: same weights."""
    recipe = make_recipe(tmp_path, nodrop_bert_dir, toy_csv, train={"max_steps": 4, "eval_every": 4})
    single = api.train(recipe, name="single")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(ddp_command(recipe, "--name", "double"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    double = tmp_path / "runs" / "double"
    assert json.loads((double / "summary.json").read_text())["processes"] == 2
    # stated tolerance: float sums in a different order (all-reduce), nothing more
    assert_close(step_weights(single, 4), step_weights(double, 4), atol=1e-5)


def rank_of(pid: int) -> int:
    """The RANK torchrun gave a worker process, from its environment."""
    env = dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in line)
    return int(env["RANK"])


def test_ctrl_c_reaching_one_process_stops_every_process_at_the_same_step(tmp_path: Path, nodrop_bert_dir: Path,
                                                                        toy_csv: Path) -> None:
    """torchrun forwards Ctrl-C to each worker on its own, so one may see it a step before the other; the worst case,
    SIGINT to rank 1 alone, must still stop both after the same step, with one complete checkpoint that resumes to
    the uninterrupted run's weights bit for bit (a process that stopped alone would leave the other waiting in the
    next all-reduce until torchrun kills both)."""
    recipe = make_recipe(tmp_path, nodrop_bert_dir, toy_csv, train={"max_steps": 60, "eval_every": 60})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(ddp_command(recipe, "--name", "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "cut.log").open("w")
    proc = subprocess.Popen(ddp_command(recipe, "--name", "cut"), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    cut = tmp_path / "runs" / "cut"
    deadline = time.monotonic() + 240
    while not (cut / "progress.json").exists():  # written from the first step on
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "cut.log").read_text()[-3000:]
        time.sleep(0.02)
    workers = {rank_of(pid): pid for pid in children(proc.pid)}
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGINT)
    try:
        assert proc.wait(timeout=120) != 0
    finally:  # a hang must not outlive the test: torchrun's workers are in sessions of their own
        for pid in [*workers.values(), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        log.close()
    output = (tmp_path / "cut.log").read_text()
    stopped = re.findall(r"interrupted at step (\d+); a checkpoint was saved", output)
    assert len(stopped) == 2 and stopped[0] == stopped[1], output[-3000:]  # both processes, the same step
    step = int(stopped[0])
    assert step < 60, "the signal must land while the run trains"
    assert [p.name for p in complete_checkpoints(cut / "checkpoints")] == [f"step-{step:07d}"]
    done = subprocess.run(ddp_command(cut, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(step_weights(tmp_path / "runs" / "whole", 60), step_weights(cut, 60), atol=0.0)


def test_resume_refuses_changed_data(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint remembers the fingerprint of every split; resuming on other data is refused, naming the split."""
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 8, "eval_every": 2})
    plain_steps = interrupt_after(monkeypatch, 2)
    with pytest.raises(RunError, match="interrupted at step 3"):
        api.train(recipe, name="cut")
    plain_steps()
    lines = toy_csv.read_text().splitlines()
    toy_csv.write_text("\n".join(lines[:1] + [line.replace("film", "movie") for line in lines[1:]]) + "\n")
    with pytest.raises(RunError, match=r"the .*train.* data differ from what this run trained on"):
        api.train(recipe, name="cut", resume=True)
