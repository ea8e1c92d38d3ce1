"""Sequence-to-sequence fine-tuning (T5, FLAN-T5, BART, Marian through ``AutoModelForSeq2SeqLM``): source -> target.

The source may carry a task prefix through ``task.prompt_template`` ('translate English to Spanish: {source}', the
T5 convention). Labels are the target's token ids, padded with -100 (never the pad id, which would teach the model
to emit padding); the decoder input is the labels shifted right by the model's own rule.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.data.sources import Row
from tunelab.recipe import GenerateConfig, Recipe
from tunelab.tasks.base import Feature, Prepared
from tunelab.tasks.generation import (
    IGNORE,
    GenerationTask,
    attention_mask,
    fill_template,
    generate,
    pad,
    prompt_from_text,
    template_problem,
    text_problem,
)


class Seq2SeqTask(GenerationTask):
    """Fine-tune an encoder-decoder model on source/target pairs; generate targets for new sources."""

    name = "seq2seq"
    decoder_only = False

    def __init__(self, recipe: Recipe, tokenizer: Any = None) -> None:
        super().__init__(recipe, tokenizer)
        self.source_col = recipe.data.columns.get("source", "source")
        self.target_col = recipe.data.columns.get("target", "target")

    def auto_class(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def check_row(self, row: Row) -> str | None:
        values = row.values
        if "messages" in values and self.source_col not in values:
            return "seq2seq takes source/target pairs, not chat messages; use task.type: causal_lm for chats"
        return (template_problem(values, self.recipe.task.prompt_template, self.source_col, "source", "source")
                or text_problem(values, self.target_col, "target", "target"))

    def featurize(self, rows: list[Row]) -> Prepared:
        task = self.recipe.task
        limits = {"source": task.max_length, "target": task.max_target_length or task.max_length}
        sources = [fill_template(r.values, task.prompt_template, self.source_col) for r in rows]
        source_ids = self.tokenizer(sources)["input_ids"]
        target_ids = self.tokenizer(text_target=[r.values[self.target_col] for r in rows])["input_ids"]
        prepared = Prepared([])
        for row, source, ids, labels in zip(rows, sources, source_ids, target_ids):
            over = [(side, n) for side, n in (("source", len(ids)), ("target", len(labels))) if n > limits[side]]
            if over and not task.truncation:
                side, n = over[0]
                key = "max_length" if side == "source" else "max_target_length"
                prepared.rejected.append((row.where(), f"the {side} is {n} tokens, over task.{key}={limits[side]} "
                                          "(raise it, or set task.truncation: true)"))
                continue
            if over:  # keep each side's closing special token (eos)
                ids = ids if len(ids) <= limits["source"] else ids[: limits["source"] - 1] + ids[-1:]
                labels = labels if len(labels) <= limits["target"] else labels[: limits["target"] - 1] + labels[-1:]
                prepared.truncated += 1
            shown = row.values.get(self.source_col)  # the bare source reads better in the report than the prompt
            prepared.features.append({"input_ids": ids, "labels": labels, "prompt_ids": ids,
                                      "input": shown if isinstance(shown, str) else source,
                                      "reference": row.values[self.target_col]})
        return prepared

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        """Right-pad sources with the pad id and labels with -100."""
        ids = [f["input_ids"] for f in features]
        return {"input_ids": pad(ids, self.pad_id), "attention_mask": attention_mask(ids),
                "labels": pad([f["labels"] for f in features], IGNORE)}

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over the target tokens (the decoder sees the labels shifted right)."""
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_input_ids, use_cache=False).logits
        keep = batch["labels"] != IGNORE
        return F.cross_entropy(logits[keep].float(), batch["labels"][keep], reduction="sum")

    def generate(self, model: nn.Module, prompts: list[str], cfg: GenerateConfig | None = None, raw: bool = False,
                 batch_size: int = 16) -> list[str]:
        """Targets for raw sources, prefixed by the recipe's template as in training."""
        texts = prompts if raw else [prompt_from_text(self.recipe.task.prompt_template, p) for p in prompts]
        ids = self.tokenizer(texts)["input_ids"]
        return generate(model, self.tokenizer, ids, cfg or self.recipe.generate, batch_size, decoder_only=False)
