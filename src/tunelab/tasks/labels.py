"""What every classification task shares, whatever it classifies: label names in id order, fitted on the training
rows, label checks that name the row's problem, and the stratification key for splits and samples."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tunelab.data.labels import label_name
from tunelab.data.prepare import label_names
from tunelab.data.sources import Row
from tunelab.evaluate.metrics import classification_metrics

EXAMPLES = 6  # shown per evaluation: the split's first examples, and as many of its most confident mistakes
THUMBNAIL = 96  # pixels, the longer side of an image example's thumbnail


class Labelled:
    """Mixin: ``label_names``/``label_ids`` and the checks around them; needs ``recipe`` and ``label_col``."""

    recipe: Any
    label_col: str
    logits: Any  # (model, features, batch_size) -> (examples, labels) tensor, in the features' order

    def set_labels(self, names: list[str]) -> None:
        self.label_names = list(names)
        self.label_ids = {name: index for index, name in enumerate(self.label_names)}

    def fit_labels(self, train_rows: list[Row]) -> None:
        """Label names in id order: as the recipe lists them, else the sorted names seen in training."""
        self.set_labels(label_names(train_rows, self.label_col, self.recipe.data.labels))

    def stratify_key(self, row: Row) -> str:
        return str(label_name(row.values[self.label_col]))

    def label_problem(self, values: dict[str, Any]) -> str | None:
        """None if the row's label is one of the training labels, else what is wrong with it."""
        if self.label_col not in values:
            return f"missing column '{self.label_col}' (the label; map it with data.columns.label)"
        label = label_name(values[self.label_col])
        if label is None:
            return f"label in column '{self.label_col}' is {values[self.label_col]!r}; expected a name or an integer"
        if label not in self.label_ids:
            return (f"unknown label '{label}' (not among the training labels: {', '.join(self.label_names)}); "
                    "list every label in data.labels or add examples of it to the training data")
        return None

    def evaluate(self, model: Any, features: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class figures, the confusion matrix and the mean loss, from the task's
        ``logits(model, features, batch_size)``."""
        logits = self.logits(model, features, batch_size)
        labels = torch.tensor([f["label"] for f in features])
        metrics = classification_metrics(logits.argmax(-1).tolist(), labels.tolist(), self.label_names)
        metrics["loss"] = F.cross_entropy(logits, labels).item()
        metrics["examples"] = self.example_predictions(features, logits.softmax(-1))
        return metrics

    def example_predictions(self, features: list[dict[str, Any]], probs: torch.Tensor) -> list[dict[str, Any]]:
        """A few predictions a person can check: the split's first examples (in its seeded order) and its most
        confident mistakes, each with the input as shown to a reader, the gold and predicted label and the
        probability given to each."""
        predicted = probs.argmax(-1).tolist()
        first = list(range(min(EXAMPLES, len(features))))
        wrong = [i for i in range(len(features)) if predicted[i] != features[i]["label"] and i not in first]
        wrong = sorted(wrong, key=lambda i: -float(probs[i, predicted[i]]))[:EXAMPLES]
        return [{"index": i, "kind": "first" if i in first else "confident mistake", "input": self.show_input(features[i]),
                 "gold": self.label_names[features[i]["label"]], "predicted": self.label_names[predicted[i]],
                 "probability": round(float(probs[i, predicted[i]]), 4),
                 "gold_probability": round(float(probs[i, features[i]["label"]]), 4)} for i in first + wrong]

    def show_input(self, feature: dict[str, Any]) -> str | None:
        """The input as a reader sees it: the text its tokens decode to, or the image as a small JPEG data URI."""
        if "input_ids" in feature and getattr(self, "tokenizer", None) is not None:
            return self.tokenizer.decode(feature["input_ids"], skip_special_tokens=True)
        if "pixels" in feature:
            return thumbnail_uri(feature["pixels"])
        return None

    def label_id(self, values: dict[str, Any]) -> int:
        """The id of a checked row's label."""
        return self.label_ids[label_name(values[self.label_col])]


def thumbnail_uri(pixels: np.ndarray) -> str:
    """An image's pixels as a JPEG thumbnail (at most THUMBNAIL pixels a side) in a data URI, for offline pages;
    JPEG keeps a photo's thumbnail near 3 KB where PNG takes 20, and summary.json carries a few dozen."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
