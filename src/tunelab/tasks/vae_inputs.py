"""What a VAE reads, as one vector of numbers per row: the numeric columns of a table, the pixels of a small image,
or the mean-pooled token states of a pretrained text encoder (a VAE then models "normal" in that feature space).

Each row is checked before it is used: a missing or non-numeric cell is named by its column (the row's file and line
come with it), an image that cannot be decoded is named, a text over the encoder's window is an error unless the
recipe allows truncation (then it is counted).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel

from tunelab.data.sources import Row
from tunelab.errors import DataError
from tunelab.models import cache_root, load_pretrained, load_tokenizer, model_path
from tunelab.tasks.image_classification import decode


def table_columns(rows: list[Row], label_col: str, given: list[str] | None) -> list[str]:
    """The columns a table VAE models: those the recipe lists, else every column of the training rows (in the order
    first seen) except the label."""
    if given:
        if len(set(given)) != len(given):
            raise DataError(f"task.columns lists a column twice: {given}")
        return list(given)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(name for name in row.values if name != label_col))
    if not seen:
        raise DataError(f"{rows[0].source if rows else 'the training data'}: no column besides the label "
                        f"'{label_col}'; a table VAE needs numeric columns")
    return list(seen)


def number(value: Any) -> float | None:
    """A cell as a finite float, or None if it is missing or not a number (bools are not numbers here)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        result = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def cell_problem(values: dict[str, Any], columns: list[str]) -> str | None:
    """None if every modelled column holds a finite number, else which column does not and what to do."""
    for column in columns:
        value = values.get(column)
        if column not in values or value is None or (isinstance(value, str) and not value.strip()) or (
                isinstance(value, float) and math.isnan(value)):
            return (f"column '{column}' has no value (a missing value); fill it in, or set data.on_bad_rows: skip to "
                    "leave such rows out (counted)")
        if number(value) is None:
            return (f"column '{column}' holds {value!r}, not a finite number; fix the cell, or leave the column out "
                    "by listing the numeric columns in task.columns")
    return None


def table_vector(values: dict[str, Any], columns: list[str]) -> np.ndarray:
    """A checked row's modelled columns as float32, in column order."""
    return np.array([number(values[c]) for c in columns], dtype=np.float32)


def image_vector(image: Any, base: Path, size: int, grayscale: bool) -> np.ndarray:
    """An image as pixels in [0, 1], resized to size x size, flattened (grey or RGB channels last).

    Raises ValueError saying what is wrong with the image (missing, empty, corrupt, tiny).
    """
    decoded, _ = decode(image, base)
    if grayscale:
        decoded = decoded.convert("L")
    if decoded.size != (size, size):
        decoded = decoded.resize((size, size), Image.BILINEAR)
    return (np.asarray(decoded, dtype=np.float32) / 255.0).reshape(-1)


def vector_id(vector: np.ndarray) -> str:
    """A digest of a row's numbers: the same input, the same key (split fingerprints and cache keys use it)."""
    return hashlib.sha256(vector.tobytes()).hexdigest()[:20]


def normalises(folder: str) -> bool:
    """Whether a sentence-transformers folder ends its pipeline with L2 normalisation (modules.json), as
    all-MiniLM-L6-v2 does: its features are meant to be compared by direction, not length."""
    path = Path(folder) / "modules.json"
    if not path.is_file():
        return False
    return any(str(module.get("type", "")).endswith(".Normalize") for module in json.loads(path.read_text("utf-8")))


class TextEncoder:
    """A pretrained encoder (catalog name, folder or hub id) whose token states, mean-pooled over the attention
    mask, are a text's feature vector; L2-normalised when the model's own pipeline says so (without it, the long
    plot synopses of the Rotten Tomatoes set sit nearer the centre than any snippet, and every detector inverts).
    Frozen: it runs in inference mode and never trains."""

    def __init__(self, name: str, max_length: int, trust_remote_code: bool = False) -> None:
        self.name, self.max_length = name, max_length
        self.tokenizer = load_tokenizer(name, trust_remote_code)
        self.model = load_pretrained(name, AutoModel, trust_remote_code, dtype=torch.float32).eval()
        self.normalise = normalises(model_path(name))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text, special tokens included (what max_length limits)."""
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def cached(self, texts: list[str]) -> np.ndarray:
        """``encode``, kept on disk under the tunelab cache by a digest of the encoder (folder, weights' size and
        time, window, normalisation) and of the texts: a resumed run, ``score`` and ``sample`` skip re-encoding."""
        folder = Path(model_path(self.name))
        stamp = [str(folder), self.max_length, self.normalise] + [
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.safetensors"))]
        digest = hashlib.sha256(json.dumps([stamp, texts]).encode("utf-8")).hexdigest()[:32]
        path = cache_root() / "text-features" / f"{digest}.npy"
        if path.is_file():
            return np.load(path)
        features = self.encode(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, features)
        os.replace(tmp, path)
        return features

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Mean-pooled (and, per the model, normalised) features of texts truncated to max_length, batched by length
        so little is padding."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[chunk] = (F.normalize(pooled, dim=-1) if self.normalise else pooled).numpy()
        return out
