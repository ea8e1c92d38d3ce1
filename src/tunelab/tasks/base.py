"""What every task provides to the rest of tunelab, so the training loop knows nothing task-specific.

A task turns validated rows into token features, builds the model with its head, collates batches, computes a
*summed* loss with the count it is summed over (so gradient accumulation and several processes can divide by the
true global count and equal one big batch), evaluates, and predicts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tunelab.data.sources import Row
from tunelab.io import publish_dir, write_json

Feature = dict[str, Any]


@dataclass
class Prepared:
    """Rows turned into model features, with the counts the run summary reports."""

    features: list[Feature]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (where, problem) of rows that cannot be used
    truncated: int = 0


class Task(Protocol):
    """The seam between the generic loop and one kind of task (classification, causal LM, seq2seq)."""

    name: str

    def check_row(self, row: Row) -> str | None:
        """None if the row is usable, else what is wrong with it (named in errors and skip counts)."""

    def build_model(self) -> torch.nn.Module:
        """The pretrained backbone with this task's head; records which parameters are new."""

    def featurize(self, rows: list[Row]) -> Prepared:
        """Tokenize rows; over-long ones are truncated (and counted) only if the recipe allows it."""

    def collate(self, features: list[Feature]) -> dict[str, torch.Tensor]:
        """Pad a micro-batch dynamically to its own longest member."""

    def count(self, features: list[Feature]) -> int:
        """How many loss terms these features contribute (examples, or target tokens)."""

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum (not mean) of the loss terms of a batch."""

    def evaluate(self, model: torch.nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Metrics on held-out features; includes 'loss' (mean per loss term)."""


def write_final(folder: Path, model: torch.nn.Module, strategy: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """Write final/ whole or not at all: the model as the strategy saves it (HF folder, PEFT adapter + head, ...),
    the tokenizer, and tunelab.json (the task's ``record`` and what the strategy says about its format)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = strategy.save_model(model, tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "tunelab.json", {**record, **info})
    publish_dir(tmp, folder)
