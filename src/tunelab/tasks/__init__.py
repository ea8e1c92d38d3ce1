"""Tasks by name; the one place that maps ``task.type`` to the class that implements it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import RunError
from tunelab.recipe import Recipe


def build_task(recipe: Recipe, tokenizer: Any) -> Any:
    """The task object for a recipe: classification, causal_lm or seq2seq."""
    if recipe.task.type == "classification":
        from tunelab.tasks.classification import ClassificationTask

        return ClassificationTask(recipe, tokenizer)
    if recipe.task.type == "causal_lm":
        from tunelab.tasks.causal_lm import CausalLMTask

        return CausalLMTask(recipe, tokenizer)
    if recipe.task.type == "seq2seq":
        from tunelab.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask(recipe, tokenizer)
    raise RunError(f"task.type '{recipe.task.type}' is not implemented; available: classification, causal_lm, seq2seq")


def load_task(final_dir: Path, recipe: Recipe) -> Any:
    """A task with the trained model from a run's final/ folder (plain HF folder or PEFT adapter + head)."""
    info_path = final_dir / "tunelab.json"
    if not info_path.is_file():
        raise RunError(f"{final_dir}: no final model (the run did not finish); resume it with tunelab train {final_dir.parent} --resume")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    from transformers import AutoTokenizer

    from tunelab.strategies.saving import load_model

    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    task = build_task(recipe, tokenizer)
    if "labels" in info:
        task.set_labels(info["labels"])
    task.model = load_model(final_dir, info, recipe)
    return task
