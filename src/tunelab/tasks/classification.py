"""Text classification: a new head on a pretrained encoder (sentiment, topics, intents).

The model is ``AutoModelForSequenceClassification`` with the label names stored in its config (id2label), so the
saved folder loads in plain transformers and predicts names, not numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification

from tunelab.data.sources import Row
from tunelab.errors import ModelError
from tunelab.evaluate.metrics import classification_metrics
from tunelab.models import architecture_class, load_pretrained
from tunelab.recipe import Recipe
from tunelab.tasks.base import Feature, Prepared, write_final

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class ClassificationTask:
    """Sequence classification with labels given by name."""

    name = "classification"

    def __init__(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> None:
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.text_col = recipe.data.columns.get("text", "text")
        self.label_col = recipe.data.columns.get("label", "label")
        self.set_labels(label_names or recipe.data.labels or [])
        self.model: nn.Module | None = None

    def set_labels(self, names: list[str]) -> None:
        self.label_names = list(names)
        self.label_ids = {name: index for index, name in enumerate(self.label_names)}

    def fit_labels(self, train_rows: list[Row]) -> None:
        """Label names in id order: as the recipe lists them, else the sorted names seen in training."""
        from tunelab.data.prepare import label_names

        self.set_labels(label_names(train_rows, self.label_col, self.recipe.data.labels))

    def stratify_key(self, row: Row) -> str:
        return str(label_name(row.values[self.label_col]))

    # ---- rows and features -------------------------------------------------------------------------------------
    def check_row(self, row: Row) -> str | None:
        values = row.values
        for role, column in (("text", self.text_col), ("label", self.label_col)):
            if column not in values:
                return f"missing column '{column}' (the {role}; map it with data.columns.{role})"
        text = values[self.text_col]
        if not isinstance(text, str):
            return f"text in column '{self.text_col}' is {type(text).__name__}, not a string"
        if not text.strip():
            return f"empty text in column '{self.text_col}'"
        label = label_name(values[self.label_col])
        if label is None:
            return f"label in column '{self.label_col}' is {values[self.label_col]!r}; expected a name or an integer"
        if label not in self.label_ids:
            return (f"unknown label '{label}' (not among the training labels: {', '.join(self.label_names)}); "
                    "list every label in data.labels or add examples of it to the training data")
        return None

    def featurize(self, rows: list[Row]) -> Prepared:
        texts = [row.values[self.text_col] for row in rows]
        max_length = self.recipe.task.max_length
        encoded = self.tokenizer(texts, truncation=False)["input_ids"]
        prepared = Prepared([])
        for row, ids in zip(rows, encoded):
            if len(ids) > max_length:
                if not self.recipe.task.truncation:
                    prepared.rejected.append((row.where(), too_long_message(len(ids), max_length)))
                    continue
                ids = ids[: max_length - 1] + ids[-1:]  # keep the closing special token
                prepared.truncated += 1
            label = self.label_ids[label_name(row.values[self.label_col])]
            prepared.features.append({"input_ids": ids, "label": label})
        return prepared

    def collate(self, features: list[Feature]) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.tokenizer.pad_token_id or 0) | {
            "labels": torch.tensor([f["label"] for f in features], dtype=torch.long)
        }

    # ---- model and loss ----------------------------------------------------------------------------------------
    def model_class(self) -> type | None:
        """The class ``build_model`` makes, read from the config alone (strategies refuse what they cannot run on)."""
        return architecture_class(self.recipe.model.name, AutoModelForSequenceClassification,
                                  self.recipe.model.trust_remote_code)

    def build_model(self) -> nn.Module:
        model, info = load_pretrained(
            self.recipe.model.name,
            AutoModelForSequenceClassification,
            trust_remote_code=self.recipe.model.trust_remote_code,
            num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)),
            label2id=self.label_ids,
            output_loading_info=True,
        )
        head = self.recipe.task.head
        replaced = None
        if head.hidden:
            replaced = replace_head(model, head.hidden, head.activation, head.dropout, len(self.label_names))
        missing = {key.rsplit(".", 1)[0] for key in info["missing_keys"]}
        model.tunelab_new_params = sorted(  # parameters the pretrained checkpoint did not have: the new head
            name for name, _ in model.named_parameters()
            if name.rsplit(".", 1)[0] in missing or (replaced and name.startswith(replaced + "."))
        )
        return model

    def count(self, features: list[Feature]) -> int:
        return len(features)

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    # ---- evaluation and prediction -----------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, model: nn.Module, features: list[Feature], batch_size: int) -> torch.Tensor:
        """Logits for features in their given order, batched by similar length."""
        model.eval()
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        out = torch.empty(len(features), len(self.label_names))
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pad_batch([features[i] for i in idx], self.tokenizer.pad_token_id or 0)
            batch = {k: v.to(device) for k, v in batch.items()}
            out[idx] = model(**batch).logits.float().cpu()
        return out

    def evaluate(self, model: nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        logits = self.logits(model, features, batch_size)
        labels = torch.tensor([f["label"] for f in features])
        metrics = classification_metrics(logits.argmax(-1).tolist(), labels.tolist(), self.label_names)
        metrics["loss"] = F.cross_entropy(logits, labels).item()
        return metrics

    def predict(self, model: nn.Module, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """Label and probabilities for raw texts (truncated to max_length, as a user expects at inference)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.recipe.task.max_length)["input_ids"]
        probs = self.logits(model, [{"input_ids": x} for x in ids], batch_size).softmax(-1)
        return [
            {"text": text, "label": self.label_names[int(p.argmax())], "scores": dict(zip(self.label_names, p.tolist()))}
            for text, p in zip(texts, probs)
        ]


    # ---- saving ------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Path, strategy: Any) -> None:
        """Write final/: the model in the ecosystem's format (HF folder, or PEFT adapter + head) and the tokenizer."""
        head = self.recipe.task.head.model_dump() if self.recipe.task.head.hidden else None
        write_final(folder, model, strategy, self.tokenizer, {"task": self.name, "labels": self.label_names, "head": head})


def label_name(value: Any) -> str | None:
    """Labels are kept as names; integers and integral floats from files become their decimal string."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else None
    if isinstance(value, (int, str)):
        return str(value).strip() or None
    return None


def too_long_message(length: int, max_length: int) -> str:
    """The one wording for over-long inputs, so skip counts group them together."""
    return f"input is {length} tokens, over task.max_length={max_length} (raise it, or set task.truncation: true)"


def pad_batch(features: list[Feature], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad input_ids to the longest in the batch (dynamic padding) with a matching attention mask."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, : len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask}


def replace_head(model: nn.Module, hidden: list[int], activation: str, dropout: float, num_labels: int) -> str:
    """Swap the single linear classifier for a small MLP (the course's 'add new layers'); returns the head's name.

    The head is the model's linear ``classifier`` (BERT-like) or ``score`` (decoder models); the MLP is
    Linear-activation-dropout per hidden size, then the output Linear.
    """
    name = next((n for n in ("classifier", "score") if isinstance(getattr(model, n, None), nn.Linear)), None)
    if name is None:
        raise ModelError(f"task.head.hidden: {type(model).__name__} has no single linear classification head "
                         "(classifier or score) to replace with an MLP; remove task.head.hidden for this model")
    width = getattr(model, name).in_features
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_labels))
    setattr(model, name, nn.Sequential(*layers))
    return name
