"""What every task provides to the rest of tunelab, so the training loop knows nothing task-specific.

A task loads its own processor (tokenizer, image preprocessing), turns validated rows into features, builds the model
with its head, collates batches, computes a *summed* loss with the count it is summed over (so gradient accumulation
and several processes can divide by the true global count and equal one big batch), evaluates, predicts, and saves
and loads ``final/``. ``TextTask`` holds what the text tasks share.

A task may own its training step instead (``train_step``), with several optimisers (``optimizer_groups``): a GAN
updates its discriminator and its generator in turn. It receives a ``Stepper`` from the loop, which makes each
update with the loop's care (micro-batches, clipping, NaN/inf handling).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch

from tunelab.data.sources import Row
from tunelab.io import publish_dir, write_json
from tunelab.models import architecture_class, load_tokenizer
from tunelab.strategies.saving import export_merged, load_model

Feature = dict[str, Any]


@dataclass
class Prepared:
    """Rows turned into model features, with the counts the run summary reports."""

    features: list[Feature]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (where, problem) of rows that cannot be used
    truncated: int = 0
    converted: Counter[str] = field(default_factory=Counter)  # rows kept after a change the summary should show


@dataclass
class OptimizerGroup:
    """One network of a task that owns its step: its parameters (by name), AdamW's rate, betas and weight decay,
    and its schedule (None: the recipe's train.schedule)."""

    names: list[str]
    lr: float
    betas: tuple[float, float] | None = None
    weight_decay: float = 0.0
    schedule: str | None = None


class Stepper(Protocol):
    """What the loop hands a task's ``train_step``: the loop step in hand (0-based ``index``) and ``update``, one
    optimiser step of the named network from ``loss_sum(model, batch)`` over the step's batch (its mean loss)."""

    index: int

    def update(self, name: str, loss_sum: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]) -> float:
        ...


class Task(Protocol):
    """The seam between the generic loop and one kind of task (classification, causal LM, seq2seq, images)."""

    name: str
    model: torch.nn.Module | None  # the trained model, once loaded from final/

    @classmethod
    def load(cls, final_dir: Path, recipe: Any, info: dict[str, Any]) -> Task:
        """The task with its processor and trained model read back from a run's final/ folder."""

    def model_class(self) -> type | None:
        """The class ``build_model`` will make, known without loading weights (None if it cannot be told)."""

    def length(self, feature: Feature) -> int:
        """A feature's size for batching similar sizes together (tokens; 1 where all are alike)."""

    def cache_keys(self, inputs: dict[str, torch.Tensor]) -> tuple[list[tuple], list[int]]:
        """A key per row of a model-input batch (same example, same key) and how many positions each row holds:
        the frozen-feature cache finds examples by these."""

    def check_row(self, row: Row) -> str | None:
        """None if the row is usable, else what is wrong with it (named in errors and skip counts)."""

    def build_model(self) -> torch.nn.Module:
        """The pretrained backbone with this task's head; records which parameters are new."""

    def featurize(self, rows: list[Row]) -> Prepared:
        """Tokenize rows; over-long ones are truncated (and counted) only if the recipe allows it."""

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        """Pad a micro-batch dynamically to its own longest member; ``train`` applies training-time augmentation
        (tasks that have it)."""

    def count(self, features: list[Feature]) -> int:
        """How many loss terms these features contribute (examples, or target tokens)."""

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum (not mean) of the loss terms of a batch."""

    def evaluate(self, model: torch.nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Metrics on held-out features; includes 'loss' (mean per loss term)."""

    def save(self, model: torch.nn.Module, folder: Path, strategy: Any) -> None:
        """Write final/ in the ecosystem's own format, with the processor and tunelab.json."""


class TextTask:
    """What the text tasks share: the tokenizer, the transformers Auto class, token-id keys, Hugging Face final/."""

    name = "text"

    def __init__(self, recipe: Any, tokenizer: Any = None) -> None:
        self.recipe = recipe
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(recipe.model.name,
                                                                                recipe.model.trust_remote_code)
        self.model: torch.nn.Module | None = None
        self.info: dict[str, Any] = {}  # final/tunelab.json, once loaded from a run
        self.final_dir: Path | None = None

    def auto_class(self) -> Any:
        """The transformers Auto class that builds this task's model."""
        raise NotImplementedError

    @classmethod
    def load(cls, final_dir: Path, recipe: Any, info: dict[str, Any]) -> TextTask:
        """The tokenizer saved in final/ and the model as its strategy wrote it (HF folder, PEFT adapter, ...)."""
        from transformers import AutoTokenizer

        task = cls(recipe, AutoTokenizer.from_pretrained(final_dir))
        if "labels" in info:
            task.set_labels(info["labels"])
        task.info, task.final_dir = info, final_dir
        task.model = load_model(final_dir, info, recipe.model, task.auto_class())
        return task

    def export(self, target: Path) -> Path:
        """A plain Hugging Face folder of the trained model, adapters merged in (see ``saving.export_merged``)."""
        return export_merged(self.final_dir, self.info, self.recipe.model, self.auto_class(), target)

    def model_class(self) -> type | None:
        """The class ``build_model`` makes, read from the config alone (strategies refuse what they cannot run on)."""
        return architecture_class(self.recipe.model.name, self.auto_class(), self.recipe.model.trust_remote_code)

    def length(self, feature: Feature) -> int:
        return len(feature["input_ids"])

    def cache_keys(self, inputs: dict[str, torch.Tensor]) -> tuple[list[tuple], list[int]]:
        """Each row's unpadded token ids; rows must be right-padded, as the collators pad for training."""
        ids = inputs["input_ids"].detach().cpu()
        mask = inputs.get("attention_mask")
        if mask is None:
            return [tuple(row.tolist()) for row in ids], [ids.shape[1]] * ids.shape[0]
        mask = mask.detach().cpu().long()
        lengths = mask.sum(1)
        if not torch.equal(lengths, mask.cumprod(1).sum(1)):
            raise ValueError("a batch is not right-padded, so rows cannot be matched to cached states")
        return [tuple(row[:n].tolist()) for row, n in zip(ids, lengths.tolist())], lengths.tolist()


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
