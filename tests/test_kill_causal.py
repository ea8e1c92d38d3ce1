"""SIGKILL and resume for a causal LM: the kill test of test_reliability.py on a tiny config-built Llama.

A causal LM's run differs from a classifier's in what a resume must restore: answers of different lengths, a loss
normalised by the count of answer tokens in the whole global batch (here over two accumulated micro-batches), no
classification head, and an evaluation by loss. The killed and resumed run must still end bit for bit as the run
that was never interrupted.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tests.test_generation import WORDS, smol_tokenizer_dir, tiny_llama_dir, write_jsonl  # noqa: F401 (fixtures)
from tests.test_reliability import EVERY, STEPS, kill_three_times_then_resume
from tunelab import api


def causal_recipe(folder: Path, model: Path, data: Path, keep: int) -> Path:
    raw = {
        "name": "causal-kill", "seed": 0, "model": {"name": str(model)},
        "task": {"type": "causal_lm", "max_length": 64},
        "data": {"train": str(data), "split": {"validation": 0.2, "test": 0.2}},
        "train": {"lr": 1e-2, "max_steps": STEPS, "batch_size": 8, "grad_accum": 2, "eval_every": EVERY,
                  "log_every": 1, "warmup_ratio": 0.0, "keep_checkpoints": keep},
        "eval": {"before": False, "batch_size": 8, "metric": "loss", "mode": "min"},
        "generate": {"max_new_tokens": 4, "samples": 0},
        "output": {"dir": str(folder / "runs")},
    }
    path = folder / f"recipe-keep{keep}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_sigkill_of_a_causal_lm_run_then_resume_equals_uninterrupted(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """Three SIGKILLs of a real ``tunelab train`` of a 2-block Llama with grad_accum 2: the first mid-checkpoint-write,
    the others at seeded random points after a checkpoint; each must hit a live process, and the resumed run must end
    with the uninterrupted run's weights and losses."""
    rng = random.Random(3)
    rows = [{"prompt": " ".join(rng.sample(WORDS, 2)), "completion": " ".join(rng.sample(WORDS, rng.randint(1, 6)))}
            for _ in range(120)]
    data = write_jsonl(tmp_path / "uneven.jsonl", rows)
    whole = api.train(causal_recipe(tmp_path, tiny_llama_dir, data, keep=100), name="whole")
    assert json.loads((whole / "summary.json").read_text())["task"] == "causal_lm"
    trials = kill_three_times_then_resume(tmp_path, causal_recipe(tmp_path, tiny_llama_dir, data, keep=2), whole,
                                          STEPS, EVERY)
    print(f"\nSIGKILL trials (causal_lm): {trials}")
