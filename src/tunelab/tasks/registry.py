"""Task types by name: the one place that maps ``task.type`` to the class that implements it.

Modules are imported when a run asks for their type, so a text run never pays for importing timm and an image run
never pays for the generation stack. A new task type is one module and one line here (and its options class in
``task_options.py``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import RunError

if TYPE_CHECKING:  # annotations only: recipe.py imports tasks.config, so importing it here at run time would cycle
    from tunelab.recipe import Recipe

TASKS: dict[str, str] = {
    "classification": "tunelab.tasks.classification:ClassificationTask",
    "causal_lm": "tunelab.tasks.causal_lm:CausalLMTask",
    "seq2seq": "tunelab.tasks.seq2seq:Seq2SeqTask",
    "image_classification": "tunelab.tasks.image_classification:ImageClassificationTask",
    "vae": "tunelab.tasks.vae:VAETask",
    "gan": "tunelab.tasks.gan:GANTask",
}

# The task a bare model name is inspected as, by the catalog's kind of model.
TASK_FOR_KIND = {"encoder": "classification", "decoder": "causal_lm", "encoder-decoder": "seq2seq",
                 "image": "image_classification"}


def task_class(task_type: str) -> type:
    """The class implementing a task type."""
    if task_type not in TASKS:
        raise RunError(f"task.type '{task_type}' is not implemented; available: {', '.join(TASKS)}")
    module, _, name = TASKS[task_type].partition(":")
    return getattr(importlib.import_module(module), name)


def build_task(recipe: Recipe, processor: Any = None) -> Any:
    """The task object for a recipe; it loads its own processor (tokenizer, image preprocessing) unless given one."""
    return task_class(recipe.task.type)(recipe, processor)


def load_task(final_dir: Path, recipe: Recipe) -> Any:
    """A task holding the trained model of a run's final/ folder (``task.model``), ready to predict and evaluate."""
    info_path = final_dir / "tunelab.json"
    if not info_path.is_file():
        raise RunError(f"{final_dir}: no final model (the run did not finish); resume it with tunelab train {final_dir.parent} --resume")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    return task_class(recipe.task.type).load(final_dir, recipe, info)
