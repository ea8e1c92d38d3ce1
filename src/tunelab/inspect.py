"""``tunelab inspect``: what trains and what is frozen, and what training will cost, before any training.

The table groups parameters by module path (to a chosen depth) with total / trainable / frozen counts, as in
the course's "247M total, 222M frozen, 24M trainable" example, followed by a memory estimate.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
import torch
from torch import nn

from tunelab.evaluate.memory import estimate_training_memory, format_bytes, measured_activations
from tunelab.recipe import Recipe, parse_recipe


def module_table(model: nn.Module, depth: int) -> list[tuple[str, int, int]]:
    """(row name, total, trainable) in model order: one row per transformer block, else per module path.

    Blocks get a row each whatever their depth in the name (bert.encoder.layer.3, model.layers.12), so freezing
    choices read directly; other parameters are grouped by their module path cut to ``depth`` parts.
    """
    from tunelab.errors import ModelError
    from tunelab.strategies.layers import ordered_blocks

    try:
        blocks = [name for name, _ in ordered_blocks(model)]
    except ModelError:
        blocks = []
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        block = next((b for b in blocks if name.startswith(b + ".")), None)
        key = block or ".".join(name.rsplit(".", 1)[0].split(".")[:depth])
        rows[key][0] += param.numel()
        rows[key][1] += param.numel() if param.requires_grad else 0
    return [(key, total, trainable) for key, (total, trainable) in rows.items()]


def recipe_for(model_or_run: str, strategy: str | None, overrides: list[str]) -> Recipe:
    """The recipe to inspect: a run's own, or a minimal one for a model name (classification for encoders)."""
    if (Path(model_or_run) / "recipe.yaml").is_file():
        from tunelab.runfolder import existing_run

        run_dir, recipe = existing_run(model_or_run)
        raw = recipe.model_dump(mode="json")
        info = run_dir / "final" / "tunelab.json"
        if info.is_file() and "labels" in (saved := json.loads(info.read_text(encoding="utf-8"))):
            raw["data"]["labels"] = saved["labels"]  # the head's size, as trained
    else:
        from tunelab.models import CATALOG
        from tunelab.tasks.registry import TASK_FOR_KIND

        from tunelab.models.vision_hf import is_image_folder

        kind = CATALOG.get(model_or_run, {}).get("kind") or ("image" if is_image_folder(model_or_run) else "encoder")
        task = TASK_FOR_KIND[kind]
        raw = {"model": {"name": model_or_run}, "task": {"type": task},
               "data": {"train": "(not read by inspect)", "labels": ["0", "1"]}}
    if strategy:
        raw["strategy"] = {"method": strategy}
    return parse_recipe(raw, "inspect", overrides)


def inspect_model(model_or_run: str, console: Console, *, strategy: str | None = None, overrides: list[str] | None = None,
                  depth: int = 3, batch_size: int = 32, seq_len: int = 128) -> dict[str, Any]:
    """Print the parameter table and memory estimate; return the counts (for tests and scripts)."""
    from tunelab.api import _quiet_libraries, parameter_counts
    from tunelab.strategies.registry import make_strategy
    from tunelab.tasks import build_task

    _quiet_libraries()
    recipe = recipe_for(model_or_run, strategy, overrides or [])
    task = build_task(recipe)
    strategy = make_strategy(recipe.strategy, recipe.task.type)
    strategy.check_model_class(task.model_class(), recipe.model.name)
    model = strategy.apply(task.build_model())
    table = Table(title=f"{recipe.model.name} — strategy {recipe.strategy.method}")
    for column in ("module", "total", "trainable", "frozen", "state"):
        table.add_column(column, justify="right" if column in ("total", "trainable", "frozen") else "left")
    for key, total, trainable in module_table(model, depth):
        state = "trains" if trainable == total else "frozen" if trainable == 0 else "partly"
        table.add_row(key, f"{total:,}", f"{trainable:,}", f"{total - trainable:,}", state)
    counts = parameter_counts(model)
    table.add_row("[bold]all", f"[bold]{counts['total']:,}", f"[bold]{counts['trainable']:,}",
                  f"[bold]{counts['frozen']:,}", f"{counts['trainable_share']:.2%} trains")
    console.print(table)
    memory = estimate_training_memory(model, batch_size=batch_size, seq_len=seq_len)
    shape = f"batch {batch_size} x {seq_len} tokens"
    if recipe.task.type == "image_classification":  # measured: CNN activations have no closed form
        _, height, width = task.preprocessing.input_size
        strategy.set_train_mode(model)
        pixels = torch.randn(batch_size, 3, height, width)
        memory["activations"] = measured_activations(model, {"pixel_values": pixels})
        memory["total"] = sum(memory[k] for k in ("weights", "gradients", "optimizer", "activations"))
        shape = f"batch {batch_size} images of 3x{height}x{width}; activations measured on one forward"
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in memory.items() if k not in ("total", "activation_blocks"))
    console.print(f"training memory estimate (fp32, AdamW, {shape}): "
                  f"[bold]{format_bytes(memory['total'])}[/] = {parts}")
    return counts | {"memory": memory}
