"""What every classification task shares, whatever it classifies: label names in id order, fitted on the training
rows, label checks that name the row's problem, and the stratification key for splits and samples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.labels import label_name
from tunelab.data.prepare import label_names
from tunelab.data.sources import Row
from tunelab.evaluate.metrics import classification_metrics


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
        return metrics

    def label_id(self, values: dict[str, Any]) -> int:
        """The id of a checked row's label."""
        return self.label_ids[label_name(values[self.label_col])]
