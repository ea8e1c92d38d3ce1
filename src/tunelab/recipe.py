"""The recipe: one YAML file that says everything about a run, validated in full before any work.

Why pydantic with ``extra="forbid"``: a misspelt key (``learning_rate`` for ``lr``) must stop the run with the key
path and a did-you-mean, never be silently ignored. Overrides from the command line (``--set train.lr=3e-5``) are
applied to the raw mapping before validation, so they get the same checks.
"""

from __future__ import annotations

import difflib
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import RecipeError
from tunelab.strategy_options import Full, StrategyConfig, fields_of_method
from tunelab.task_options import ClassificationConfig, TaskConfig, fields_of_task


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(Strict):
    name: str = Field(description="Catalog name (minilm-l6, smollm2-135m-instruct), local folder, or hub id.")
    trust_remote_code: bool = Field(False, description="Run code shipped with a hub model. Off unless you trust it.")


class SplitConfig(Strict):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for test.")
    stratify: bool = True


class AugmentConfig(Strict):
    run: str = Field(description="A finished class-conditional generative run (task.type gan, task.conditional) "
                     "whose labels are this recipe's labels, e.g. runs/gan-digits.")
    n: int = Field(gt=0, description="Synthetic rows added to the training split only, balanced across classes "
                   "and drawn with the recipe seed; validation and test stay real. The summary counts them.")


class DataConfig(Strict):
    dataset: str | None = Field(None, description="A built-in dataset name (rotten-tomatoes, ...).")
    train: str | None = Field(None, description="Path of the training file (csv, tsv, jsonl, parquet).")
    validation: str | None = None
    test: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="Map of role -> column, e.g. {text: review}.")
    labels: list[str] | None = Field(None, description="Label names in id order; default: sorted names seen in train.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    on_bad_rows: Literal["error", "skip"] = "error"
    limit: int | None = Field(None, gt=0, description="Train on N rows: a sample seeded by the recipe seed and "
                              "stratified like the split (label, or data.stratify_by), taken after validation and "
                              "test are carved out; the rows left out are counted in the run summary.")
    stratify_by: str | None = Field(None, description="Column to stratify splits and samples by (e.g. a topic "
                                    "column); default: the label for classification, none for generation tasks.")
    multiline_fields: Literal["check", "keep"] = Field("check", description="CSV/TSV quoted fields that span lines "
                                                       "(always counted and named): 'check' treats one that also "
                                                       "holds the delimiter as a bad row (a stray opening quote "
                                                       "swallows the rows after it that way); 'keep' accepts it.")
    augment: AugmentConfig | None = Field(None, description="Add samples from a trained generative run to the "
                                          "training split (image classification): {run: PATH, n: N}.")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.train is None):
            raise ValueError("give exactly one of data.dataset (a built-in name) or data.train (a file path)")
        return self


class OptimConfig(Strict):
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the new head (default: 1e-1 "
                                   "for feature_extraction, 3e-2 for the other methods that freeze what lies under it, "
                                   "else train.lr).")
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
    max_seconds: float | None = Field(None, gt=0, description="Wall-clock budget of training (evaluation excluded): "
                                      "stop at the first step boundary past it.")
    seed: int | None = Field(None, description="Seed of head init, dropout and batch order (default: the recipe seed, "
                             "which also fixes the data split); vary it to repeat a run on the same split.")
    batch_size: int = Field(32, gt=0, description="Examples per optimiser step (global, all processes).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per step; batch_size must divide by it.")
    schedule: Literal["linear", "cosine", "step", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="Overrides warmup_ratio when set.")
    step_size: int = Field(100, gt=0, description="Steps between decays for schedule=step.")
    gamma: float = Field(0.5, gt=0, le=1, description="Decay factor for schedule=step.")
    max_grad_norm: float | None = Field(1.0, gt=0)
    on_nan: Literal["stop", "skip"] = Field("stop", description="A NaN/inf loss or gradient: stop the run (naming step, "
                                            "batch and last good checkpoint), or skip that optimiser step (counted).")
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N steps (always at epoch ends).")
    early_stopping: EarlyStopping | None = None
    keep_checkpoints: int = Field(2, ge=1, description="Newest step checkpoints kept (the best is always kept).")
    group_by_length: bool = Field(True, description="Batch similar lengths together to waste less on padding.")
    log_every: int = Field(10, gt=0)
    compile: bool = Field(False, description="torch.compile the model in place. Off by default: on a 2-core CPU it "
                          "took minutes to compile and gained nothing (bench/README.md); try it on a GPU.")
    threads: int | None = Field(None, gt=0, description="CPU threads per process (default: OMP_NUM_THREADS "
                                "for a single process when set, else the physical cores shared out among the "
                                "processes on this machine).")
    release_memory: bool = Field(False, description="Linux/glibc: return freed tensors of 1 MiB or more to the OS "
                                 "at once: lower peak memory (5-13% measured), but a page fault per large allocation "
                                 "made training 1.2-1.75x slower (docs/defaults.md).")
    chunked_loss: bool = Field(True, description="causal_lm: the output layer and cross-entropy run in chunks over "
                               "the labelled tokens only, recomputed in the backward pass, so the logits (tokens x "
                               "vocabulary) are never held whole (checked against the plain loss on the first batch).")
    activation_checkpointing: bool = Field(False, description="Keep only each block's inputs and recompute its "
                                           "activations in the backward pass: much less memory, about a third "
                                           "more compute (transformers models that support it).")
    activation_checkpointing_every: int = Field(1, ge=1, description="With activation_checkpointing: checkpoint "
                                                "every n-th block only (2: half of them), trading memory back for "
                                                "speed where full checkpointing frees more than is needed.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Mixed precision through Accelerate "
                                                     "(autocast; fp16 also scales the loss), evaluation included. "
                                                     "bf16 pays on a CPU with bfloat16 units (AVX512-BF16, AMX) and "
                                                     "runs about 2x slower on one without; fp16 needs a GPU.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        """Settings that are each valid but do not fit together."""
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if self.activation_checkpointing_every != 1 and not self.activation_checkpointing:
            raise ValueError(f"activation_checkpointing_every ({self.activation_checkpointing_every}) does nothing "
                             "without activation_checkpointing: true; set that too, or remove it")
        return self


class EvalConfig(Strict):
    metric: str = Field("accuracy", description="Metric that picks the best checkpoint and drives early stopping.")
    mode: Literal["max", "min"] = "max"
    before: bool = Field(True, description="Evaluate the untouched model first.")
    batch_size: int = Field(64, gt=0)
    max_examples: int | None = Field(None, gt=0, description="Evaluate at most N examples of each held-out split "
                                     "(validation, test), to bound evaluation time: a sample seeded by the recipe "
                                     "seed and stratified like the split, the same every time; the summary gives the "
                                     "evaluated and the full size.")


class GenerateConfig(Strict):
    """How generation tasks generate: in before/after evaluation, ``tunelab generate`` and ``tunelab chat``."""

    max_new_tokens: int = Field(64, gt=0)
    num_beams: int = Field(1, ge=1, description="Beam search when > 1.")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling only.")
    top_p: float = Field(1.0, gt=0, le=1, description="Sampling only: nucleus mass.")
    top_k: int = Field(50, ge=0, description="Sampling only: 0 = no top-k filter.")
    repetition_penalty: float = Field(1.0, gt=0)
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer (e.g. [\"\\n\"] for one-line "
                            "outputs); the text from the first one on is cut.")
    samples: int = Field(5, ge=0, description="Held-out examples shown side by side (before/after) in the report.")


class OutputConfig(Strict):
    dir: str = Field("runs", description="Parent folder of run folders.")
    trackers: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Experiment trackers that receive every logged metric "
        "(through Accelerate): tensorboard writes into the run folder; mlflow into RUN/mlruns unless "
        "MLFLOW_TRACKING_URI is set; [] for none.")


class Recipe(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = 0
    model: ModelConfig
    task: TaskConfig = Field(default_factory=ClassificationConfig)
    data: DataConfig
    strategy: StrategyConfig = Field(default_factory=Full)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _classification_by_default(cls, raw: Any) -> Any:
        """A task section without a type is a classification task, as a recipe without one is."""
        if isinstance(raw, dict) and isinstance(raw.get("task"), dict) and "type" not in raw["task"]:
            raw = {**raw, "task": {**raw["task"], "type": "classification"}}
        return raw

    @model_validator(mode="after")
    def _task_metric_default(self) -> Recipe:
        """Unless the recipe says otherwise, the best checkpoint is chosen on the task's own metric (accuracy for
        classifiers; the lowest loss for tasks without one, such as generation)."""
        if "metric" not in self.eval.model_fields_set:
            self.eval.metric, self.eval.mode = type(self.task).default_metric
        return self

    @model_validator(mode="after")
    def _known_column_roles(self) -> Recipe:
        """data.columns is a free mapping, so a misspelt role ({txt: review}) would otherwise be silently ignored."""
        roles = type(self.task).column_roles
        for role in sorted(set(self.data.columns) - set(roles)):
            close = difflib.get_close_matches(role, roles, n=1)
            hint = f" Did you mean 'data.columns.{close[0]}'?" if close else ""
            raise ValueError(f"unknown key 'data.columns.{role}' for task.type {self.task.type}.{hint} "
                             f"Its roles are: {', '.join(roles)}")
        return self

    @property
    def train_seed(self) -> int:
        """The seed of training randomness; the data split always follows ``seed`` so repeats share one split."""
        return self.seed if self.train.seed is None else self.train.seed


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
        # the strategy and task unions add the tag as a path element: drop it so paths read strategy.rank
        if len(loc) > 1 and loc[0] in ("strategy", "task") and loc[1] not in _fields_at((loc[0],)):
            loc = [loc[0], *loc[2:]] if len(loc) > 2 else loc
        path = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])  # the user's key, even one holding '[' (which the filter above drops)
            parent = loc[:-1] if loc[-1:] == [key] else loc
            path = ".".join([*parent, key])
            known = _union_fields(e) if parent in (["strategy"], ["task"]) else _fields_at(tuple(parent))
            hint = _did_you_mean(key, known, parent)
            lines.append(f"  - unknown key '{path}'.{hint} Valid keys here: {', '.join(sorted(known))}.")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {reprlib.repr(value)})"  # reprlib: huge values stay short
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


def _union_fields(e: dict) -> list[str]:
    """Valid keys of the strategy method or task type the error is about (the tag is the path's second part)."""
    section, tag = str(e["loc"][0]), str(e["loc"][1])
    return fields_of_method(tag) if section == "strategy" else fields_of_task(tag)


def set_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a raw recipe mapping; the value is parsed as YAML."""
    if "=" not in assignment:
        raise RecipeError(f"--set '{assignment}': expected KEY=VALUE, e.g. --set train.lr=3e-5")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set '{assignment}': '{key}' is not a key path; write it like train.lr")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set '{assignment}': '{part}' is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise RecipeError(f"--set '{assignment}': the value is not valid YAML ({getattr(err, 'problem', None) or err}); quote it") from None


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


def _check_shape(raw: Any, source: str, max_nodes: int = 10_000, max_depth: int = 20) -> None:
    """Refuse what no recipe looks like before walking it: YAML alias bombs (a few lines that expand to millions
    of values), self-referencing anchors and absurd nesting would otherwise hang or crash the checks below."""
    stack, seen = [(raw, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if depth > max_depth or seen > max_nodes:
            raise RecipeError(f"{source}: the recipe is too large or too deeply nested (YAML anchors/aliases?); "
                              f"a recipe holds at most {max_nodes} values, {max_depth} levels deep")
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]


def parse_recipe(raw: dict, source: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    """Validate a raw mapping (plus overrides) into a Recipe, or raise RecipeError naming every bad key."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping of sections (model, data, ...), got {type(raw).__name__}")
    _check_shape(raw, source)
    raw = _yaml_float(raw)
    for assignment in overrides or []:
        set_override(raw, assignment)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_format_errors(err, source)) from None


def read_recipe_file(path: str | Path) -> Any:
    """A recipe file's YAML as read ({} when empty), not yet validated; a missing or unreadable file is a RecipeError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file. Ready recipes are in the recipes/ folder.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise RecipeError(f"{path}: YAML nested too deeply to read; a recipe is a few sections of keys") from None
    return raw if raw is not None else {}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file; every problem is reported with the file name and key path."""
    return parse_recipe(read_recipe_file(path), str(path), overrides)


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (defaults filled in), written next to the results."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
