"""The recipe: one YAML file that says everything about a run, validated in full before any work.

Why pydantic with ``extra="forbid"``: a misspelt key (``learning_rate`` for ``lr``) must stop the run with the key
path and a did-you-mean, never be silently ignored. Overrides from the command line (``--set train.lr=3e-5``) are
applied to the raw mapping before validation, so they get the same checks.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import RecipeError
from tunelab.strategies.config import Full, StrategyConfig


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(Strict):
    name: str = Field(description="Catalog name (minilm-l6, smollm2-135m-instruct), local folder, or hub id.")
    trust_remote_code: bool = Field(False, description="Run code shipped with a hub model. Off unless you trust it.")


class HeadConfig(Strict):
    hidden: list[int] = Field(default_factory=list, description="Hidden sizes of extra head layers; [] = one linear layer.")
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TaskConfig(Strict):
    type: Literal["classification", "causal_lm", "seq2seq"] = "classification"
    max_length: int = Field(128, gt=0, description="Longest input in tokens.")
    truncation: bool = Field(False, description="Truncate over-long inputs (counted); if false they are an error.")
    head: HeadConfig = Field(default_factory=HeadConfig)


class SplitConfig(Strict):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for test.")
    stratify: bool = True


class DataConfig(Strict):
    dataset: str | None = Field(None, description="A built-in dataset name (rotten-tomatoes, ...).")
    train: str | None = Field(None, description="Path of the training file (csv, tsv, jsonl, parquet).")
    validation: str | None = None
    test: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="Map of role -> column, e.g. {text: review}.")
    labels: list[str] | None = Field(None, description="Label names in id order; default: sorted names seen in train.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    on_bad_rows: Literal["error", "skip"] = "error"
    limit: int | None = Field(None, gt=0, description="Use only the first N training rows (after shuffling).")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.train is None):
            raise ValueError("give exactly one of data.dataset (a built-in name) or data.train (a file path)")
        return self


class OptimConfig(Strict):
    head_lr: float | None = Field(None, gt=0, description="Learning rate of new layers (default: lr).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay; never applied to biases and norms.")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    layer_lr_decay: float = Field(1.0, gt=0, le=1.0, description="Discriminative LR: lr * decay**(depth from top).")


class EarlyStopping(Strict):
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW) of the backbone.")
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Optimiser steps; overrides epochs when set.")
    batch_size: int = Field(32, gt=0, description="Examples per optimiser step (global, all processes).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per step; batch_size must divide by it.")
    schedule: Literal["linear", "cosine", "step", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="Overrides warmup_ratio when set.")
    step_size: int = Field(100, gt=0, description="Steps between decays for schedule=step.")
    gamma: float = Field(0.5, gt=0, le=1, description="Decay factor for schedule=step.")
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N steps (always at epoch ends).")
    early_stopping: EarlyStopping | None = None
    keep_checkpoints: int = Field(2, ge=1, description="Newest step checkpoints kept (the best is always kept).")
    group_by_length: bool = Field(True, description="Batch similar lengths together to waste less on padding.")
    log_every: int = Field(10, gt=0)

    @model_validator(mode="after")
    def _divisible(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        return self


class EvalConfig(Strict):
    metric: str = Field("accuracy", description="Metric that picks the best checkpoint and drives early stopping.")
    mode: Literal["max", "min"] = "max"
    before: bool = Field(True, description="Evaluate the untouched model first.")
    batch_size: int = Field(64, gt=0)


class OutputConfig(Strict):
    dir: str = Field("runs", description="Parent folder of run folders.")


class Recipe(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = 0
    model: ModelConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig
    strategy: StrategyConfig = Field(default_factory=Full)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)


def _fields_at(loc: tuple, model: type[BaseModel] = Recipe) -> list[str]:
    """Names of the fields valid at a location, for did-you-mean suggestions."""
    current: Any = model
    for part in loc:
        ann = getattr(current, "model_fields", {}).get(part)
        if ann is None:
            return []
        current = ann.annotation
        if hasattr(current, "__args__"):
            current = next((a for a in current.__args__ if hasattr(a, "model_fields")), current)
    return list(getattr(current, "model_fields", {}))


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: the recipe is invalid:"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not (isinstance(p, str) and "[" in p)]
        # the strategy union adds the method name as a path element: drop it so paths read strategy.rank
        if len(loc) > 1 and loc[0] == "strategy" and loc[1] not in _fields_at(("strategy",)):
            loc = [loc[0], *loc[2:]] if len(loc) > 2 else loc
        path = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent, key = loc[:-1], loc[-1]
            known = _strategy_fields(e) if parent == ["strategy"] else _fields_at(tuple(parent))
            hint = _did_you_mean(key, known, parent)
            lines.append(f"  - unknown key '{path}'.{hint} Valid keys here: {', '.join(sorted(known))}.")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            choices = _choices(e)
            given = str((e.get("ctx") or {}).get("tag", value))
            close = difflib.get_close_matches(given, choices, n=1) if choices else []
            hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"  - {path}: {e['msg']}{shown}.{hint}")
    return "\n".join(lines)


# Names people bring from other tools, mapped to ours.
_SYNONYMS = {"learning_rate": "lr", "lr_decay": "layer_lr_decay", "rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "num_epochs": "epochs", "num_train_epochs": "epochs", "gradient_accumulation_steps": "grad_accum",
             "per_device_train_batch_size": "batch_size", "lr_scheduler_type": "schedule", "seed_value": "seed"}


def _did_you_mean(key: str, known: list[str], parent: list[str]) -> str:
    """Suggest a key here, or the section where the key really lives (optim.lr -> train.lr)."""
    wanted = _SYNONYMS.get(key, key)
    if wanted in known:
        return f" Did you mean '{wanted}'?"
    for section in Recipe.model_fields:
        if section != (parent[0] if parent else None) and wanted in _fields_at((section,)):
            return f" Did you mean '{section}.{wanted}'?"
    close = difflib.get_close_matches(key, known, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _choices(e: dict) -> list[str]:
    """Allowed values of an enum-like error, parsed from pydantic's context."""
    ctx = e.get("ctx") or {}
    text = str(ctx.get("expected") or ctx.get("expected_tags") or "")
    return re.findall(r"'([^']+)'", text)


def _strategy_fields(e: dict) -> list[str]:
    from tunelab.strategies.config import fields_of_method

    return fields_of_method(str(e["loc"][1]))


def set_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a raw recipe mapping; the value is parsed as YAML."""
    if "=" not in assignment:
        raise RecipeError(f"--set '{assignment}': expected KEY=VALUE, e.g. --set train.lr=3e-5")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set '{assignment}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads '3e-5' as a string; recipes mean the number."""
    if isinstance(value, dict):
        return {k: _yaml_float(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_float(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in "e.") and value[0] in "0123456789.-+" else value
        except ValueError:
            return value
    return value


def parse_recipe(raw: dict, source: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    """Validate a raw mapping (plus overrides) into a Recipe, or raise RecipeError naming every bad key."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping of sections (model, data, ...), got {type(raw).__name__}")
    raw = _yaml_float(raw)
    for assignment in overrides or []:
        set_override(raw, assignment)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_format_errors(err, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file; every problem is reported with the file name and key path."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file. Ready recipes are in the recipes/ folder.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    return parse_recipe(raw if raw is not None else {}, str(path), overrides)


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (defaults filled in), written next to the results."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
