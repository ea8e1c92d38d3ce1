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
from tunelab.models import load_pretrained
from tunelab.models.heads import replace_head
from tunelab.recipe import Recipe
from tunelab.tasks.base import Feature, Prepared, TextTask, write_final
from tunelab.tasks.labels import Labelled

class ClassificationTask(Labelled, TextTask):
    """Sequence classification with labels given by name."""

    name = "classification"
    def __init__(self, recipe: Recipe, tokenizer: Any = None, label_names: list[str] | None = None) -> None:
        super().__init__(recipe, tokenizer)
        self.text_col = recipe.data.columns.get("text", "text")
        self.label_col = recipe.data.columns.get("label", "label")
        self.set_labels(label_names or recipe.data.labels or [])

    # ---- rows and features -------------------------------------------------------------------------------------
    def check_row(self, row: Row) -> str | None:
        values = row.values
        if self.text_col not in values:
            return f"missing column '{self.text_col}' (the text; map it with data.columns.text)"
        text = values[self.text_col]
        if not isinstance(text, str):
            return f"text in column '{self.text_col}' is {type(text).__name__}, not a string"
        if not text.strip():
            return f"empty text in column '{self.text_col}'"
        return self.label_problem(values)

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
            prepared.features.append({"input_ids": ids, "label": self.label_id(row.values)})
        return prepared

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.tokenizer.pad_token_id or 0) | {
            "labels": torch.tensor([f["label"] for f in features], dtype=torch.long)
        }

    # ---- model and loss ----------------------------------------------------------------------------------------
    def auto_class(self) -> Any:
        return AutoModelForSequenceClassification

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
