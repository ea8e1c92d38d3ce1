"""What the generative tasks (VAE, GAN) share: each row read as one vector of numbers (a table's numeric columns, a
small image's pixels, or a pretrained text encoder's features; see ``vae_inputs``), checked row by row, and a
scaler fitted on the training split only.

A mixin rather than a base task: each task adds what its rows carry besides the vector (a VAE's anomaly flag, a
conditional GAN's class) and its own model, loss and evaluation.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from tunelab.data.sources import Row
from tunelab.errors import DataError, RecipeError
from tunelab.io import publish_dir, write_json
from tunelab.tasks import synthetic
from tunelab.tasks.base import Feature, Prepared
from tunelab.tasks.vae_inputs import (TextEncoder, cell_problem, image_vector, table_columns, table_vector,
                                      vector_id)

RAW = "none"  # model.name of a task that reads the numbers themselves (no pretrained encoder)


def check_inputs(recipe: Any, what: str) -> None:
    """Refuse, before any work, a recipe whose model and strategy do not fit a generative task's input."""
    cfg = recipe.task
    if recipe.strategy.method != "full":
        raise RecipeError(f"strategy {recipe.strategy.method} freezes or adapts pretrained weights, and a {what} has "
                          "none: it trains from scratch, every parameter. Use strategy: {method: full}")
    if cfg.input == "text" and recipe.model.name == RAW:
        raise RecipeError(f"task.input text needs a text encoder in model.name (e.g. minilm-l6), whose features the "
                          f"{what} models")
    if cfg.input != "text" and recipe.model.name != RAW:
        kind = "pixels" if cfg.input == "image" else "numbers"
        raise RecipeError(f"task.input {cfg.input}: the {what} reads the {kind} directly, so model.name "
                          f"'{recipe.model.name}' would not be used; set model.name: {RAW}")


class VectorInputs:
    """Mixin: rows as checked vectors and the training-split scaler; needs ``recipe.task`` with the input options."""

    def init_inputs(self, recipe: Any, encoder: TextEncoder | None) -> None:
        self.recipe, self.cfg = recipe, recipe.task
        columns = recipe.data.columns
        self.label_col = columns.get("label", "label")
        self.text_col, self.image_col = columns.get("text", "text"), columns.get("image", "image")
        self.columns: list[str] = list(self.cfg.columns or [])
        self.encoder = encoder
        if encoder is None and self.cfg.input == "text":
            self.encoder = TextEncoder(recipe.model.name, self.cfg.max_length, recipe.model.trust_remote_code)
        self.model: torch.nn.Module | None = None
        self.info: dict[str, Any] = {}
        self.final_dir: Path | None = None
        self.train_x: np.ndarray | None = None  # raw training vectors, for the scaler and the quality checks
        self.constant: list[int] = []  # encoder features that never vary in training (kept at spread 1)

    @property
    def processor(self) -> TextEncoder | None:
        return self.encoder

    def fit_columns(self, train_rows: list[Row]) -> None:
        """A table's modelled columns, from the training rows (kept as saved for a loaded model)."""
        if self.cfg.input == "table" and self.model is None:
            self.columns = table_columns(train_rows, self.label_col, self.cfg.columns)

    def input_problem(self, values: dict[str, Any]) -> str | None:
        """None if the row holds a usable input (numbers, an image, a text), else what is wrong with it."""
        if self.cfg.input == "table":
            return cell_problem(values, self.columns)
        column = self.image_col if self.cfg.input == "image" else self.text_col
        if column not in values:
            return f"missing column '{column}' (the {self.cfg.input}; map it with data.columns.{self.cfg.input})"
        if self.cfg.input == "text" and not (isinstance(values[column], str) and values[column].strip()):
            return f"column '{column}' holds {values[column]!r}, not a text"
        return None

    def vectors(self, rows: list[Row], fields: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Prepared:
        """Checked rows as features {x, id, where, **fields(values)}; images that do not decode and texts over the
        encoder window are rejected (or, for texts with task.truncation, truncated and counted)."""
        prepared = Prepared([])
        if not rows:
            return prepared
        if self.cfg.input == "text":
            rows, vectors = self._texts(rows, prepared)
        elif self.cfg.input == "image":
            kept, vectors = [], []
            for row in rows:
                try:
                    vectors.append(image_vector(row.values[self.image_col], Path(row.source).parent,
                                                self.cfg.image_size, self.cfg.grayscale))
                    kept.append(row)
                except ValueError as err:
                    prepared.rejected.append((row.where(), str(err)))
            rows = kept
        else:
            vectors = [table_vector(row.values, self.columns) for row in rows]
        for row, vector in zip(rows, vectors):
            prepared.features.append({"x": vector, "id": vector_id(vector), "where": row.where(),
                                      **(fields(row.values) if fields else {})})
        return prepared

    def _texts(self, rows: list[Row], prepared: Prepared) -> tuple[list[Row], list[np.ndarray]]:
        texts = [str(row.values[self.text_col]) for row in rows]
        kept = []
        for row, length in zip(rows, self.encoder.lengths(texts)):
            if length <= self.cfg.max_length:
                kept.append(row)
            elif self.cfg.truncation:
                prepared.truncated += 1
                kept.append(row)
            else:
                prepared.rejected.append((row.where(), f"text is {length} tokens, over task.max_length="
                                          f"{self.cfg.max_length}; raise it, or set task.truncation: true (counted)"))
        return kept, list(self.encoder.cached([str(row.values[self.text_col]) for row in kept]))

    def fit_scaler(self, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images keep their [0, 1] pixels; tables and text features are standardised with training statistics.

        A table column with one value in every training row is an error (it cannot be scaled and says nothing); an
        encoder's feature that never varies (MiniLM has such dimensions) keeps spread 1, and is named in final/."""
        if self.cfg.input == "image":
            return torch.zeros(train.shape[1]), torch.ones(train.shape[1])
        spread = train.std(0)
        self.constant = np.flatnonzero(spread == 0).tolist()
        if self.constant and self.cfg.input == "table":
            column = self.constant[0]
            raise DataError(f"column '{self.columns[column]}' has the same value ({train[0, column]:g}) in every "
                            f"training row ({len(self.constant)} such column(s)): it cannot be scaled and says "
                            "nothing; leave it out by listing the other columns in task.columns")
        spread[self.constant] = 1.0
        return torch.from_numpy(train.mean(0)), torch.from_numpy(spread)

    def judge(self, model: torch.nn.Module, fake: np.ndarray, features: list[Feature],
              labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
        """``synthetic.quality`` of raw synthetic rows against these real rows and the training rows, all in the
        model's scaled units (tables also get per-column distances)."""
        center, spread = model.center.cpu().numpy(), model.spread.cpu().numpy()
        scale = lambda x: (np.asarray(x, dtype=np.float64) - center) / spread  # noqa: E731
        real = scale(np.stack([f["x"] for f in features]))
        return synthetic.quality(scale(fake), real, scale(self.train_x), self.recipe.seed,
                                 self.columns if self.cfg.input == "table" else None, labels)

    def grid(self, fake: np.ndarray, run_dir: Path, per_row: int = 8) -> dict[str, str]:
        """plots/samples.png of image samples (``synthetic.sample_grid``); nothing for other inputs."""
        if self.cfg.input != "image":
            return {}
        synthetic.sample_grid(run_dir / "plots" / "samples.png", fake, self.cfg.image_size, self.cfg.grayscale, per_row)
        return {"samples": "plots/samples.png"}

    def write_final(self, model: torch.nn.Module, folder: Path, strategy: Any, record: dict[str, Any]) -> None:
        """final/, whole or not at all: every tensor of the model (weights and scaler) in model.safetensors, and
        tunelab.json with what reading rows again needs (input, columns, encoder, image size) and the task's
        ``record``."""
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()},
                  tmp / "model.safetensors")
        write_json(tmp / "tunelab.json", {
            "task": self.name, "format": "safetensors", "strategy": strategy.name, "input": self.cfg.input,
            "dim": model.dim, "columns": self.columns, "encoder": self.recipe.model.name if self.encoder else None,
            "constant_features": self.constant, "image_size": self.cfg.image_size if self.cfg.input == "image" else None,
            "grayscale": self.cfg.grayscale, **record})
        publish_dir(tmp, folder)

    def length(self, feature: Feature) -> int:
        return 1

    def count(self, features: list[Feature]) -> int:
        return len(features)

    def cache_keys(self, inputs: dict[str, torch.Tensor]) -> tuple[list[tuple], list[int]]:
        rows = inputs["inputs"].detach().cpu().contiguous()
        return [(hashlib.sha1(row.numpy().tobytes()).digest(),) for row in rows], [1] * len(rows)
