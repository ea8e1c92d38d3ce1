"""Named strategy presets, custom variants from a YAML file, and the per-variant budget.

Each preset is a ``strategy`` section plus a learning rate with the reason for it: a fair comparison gives every
method a learning rate in its usual range (a new head or an adapter starts from scratch and needs a larger one than
pretrained weights), and the report prints it next to the result so the reader can judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import RecipeError


@dataclass(frozen=True)
class Preset:
    """One variant of the recipe: its strategy section, its learning rate and why that rate."""

    name: str
    strategy: dict[str, Any]
    lr: float
    why: str
    overrides: list[str] = field(default_factory=list)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("full", {"method": "full"}, 1e-4,
           "every weight trains; 2e-5..1e-4 is the usual range for BERT-sized encoders, the top of it for short budgets"),
    Preset("freeze-bottom-25", {"method": "freeze", "bottom": 0.25, "embeddings": True}, 1e-4,
           "embeddings and the bottom quarter of the blocks frozen; the rest trains like full fine-tuning"),
    Preset("freeze-bottom-50", {"method": "freeze", "bottom": 0.5, "embeddings": True}, 1e-4,
           "embeddings and the bottom half of the blocks frozen; the rest trains like full fine-tuning"),
    Preset("feature-extraction", {"method": "feature_extraction"}, 1e-3,
           "only the new head trains, from scratch, at the strategy's head rate 1e-1 (train.lr moves nothing here)"),
    Preset("lora", {"method": "lora", "r": 8, "alpha": 16}, 1e-3,
           "rank-8 adapters start at zero; LoRA papers use 2e-4..1e-3 (Hu et al. 2021 used 4e-4..5e-4 on RoBERTa), "
           "the top of it for a short budget; head at 3e-2 over the frozen pooler"),
    Preset("ia3", {"method": "ia3"}, 1e-2,
           "learnt rescaling vectors start at one and need large steps (Liu et al. 2022 used 3e-3 over far longer "
           "runs); head at 3e-2"),
    Preset("bitfit", {"method": "bitfit"}, 5e-3,
           "only biases (and the head, at 3e-2) train; Ben Zaken et al. 2021 searched 1e-4..1e-3 over many epochs; "
           "a short budget needs more"),
    Preset("gradual-unfreeze", {"method": "gradual_unfreeze"}, 1e-4,
           "ULMFiT: head first, one more block from the top at each stage; stages split a step budget evenly"),
]}

DEFAULT_PRESETS = list(PRESETS)


class _FileEntry(BaseModel):
    """One variant in a ``--strategy-file``."""

    model_config = ConfigDict(extra="forbid")
    strategy: dict[str, Any] = Field(description="The recipe's strategy section for this variant, e.g. {method: lora, r: 16}.")
    lr: float | None = Field(None, gt=0, description="train.lr of this variant (default: the recipe's train.lr).")
    why: str = Field("from the strategy file", description="One line for the report: what it is, why this lr.")
    set: list[str] = Field(default_factory=list, description="Extra KEY=VALUE overrides for this variant only.")


class Invalid(Exception):
    """A strategy-file entry that cannot become a variant; the comparison reports it as failed and goes on."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def load_strategy_file(path: Path, default_lr: float) -> dict[str, Preset | Invalid]:
    """Custom variants from YAML: ``NAME: {strategy: {...}, lr: 1e-3, why: ..., set: [KEY=VALUE]}``.

    A broken file stops the comparison (nothing to compare); one broken entry only fails that variant, so a typo in
    one experiment does not throw away the others. A name equal to a preset replaces that preset.
    """
    if not path.is_file():
        raise RecipeError(f"{path}: no such strategy file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{path}: a strategy file is a mapping of variant name -> {{strategy: {{method: ...}}, lr: ...}}")
    found: dict[str, Preset | Invalid] = {}
    for name, entry in raw.items():
        name = str(name)
        _check_name(name, str(path))
        try:
            parsed = _FileEntry.model_validate(entry)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in err.errors())
            found[name] = Invalid(name, f"{path}: variant '{name}' is invalid: {problems}")
            continue
        found[name] = Preset(name, parsed.strategy, parsed.lr or default_lr, parsed.why, parsed.set)
    return found


def _check_name(name: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise RecipeError(f"{where}: variant name '{name}' may use only letters, digits, '.', '_' and '-', not starting "
                          "with '.' (it names a folder)")


def pick_variants(names: list[str], custom: dict[str, Preset | Invalid]) -> list[Preset | Invalid]:
    """The variants to run, in order: the named presets (custom entries win on a name clash), then the other custom ones."""
    chosen: list[Preset | Invalid] = []
    for name in names:
        if name in custom:
            chosen.append(custom[name])
        elif name in PRESETS:
            chosen.append(PRESETS[name])
        else:
            import difflib

            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"--strategies: unknown preset '{name}'.{hint} Presets: {', '.join(PRESETS)}; "
                              "define others in a --strategy-file")
    return chosen + [variant for name, variant in custom.items() if name not in names]


@dataclass(frozen=True)
class Budget:
    """What each variant may spend: the recipe's own epochs/steps, a number of steps or epochs, or seconds of training."""

    kind: Literal["recipe", "steps", "epochs", "seconds"]
    value: float = 0.0

    def overrides(self) -> list[str]:
        """The recipe overrides that impose this budget."""
        if self.kind == "steps":
            return [f"train.max_steps={int(self.value)}"]
        if self.kind == "epochs":
            return [f"train.epochs={self.value}", "train.max_steps=null"]
        if self.kind == "seconds":
            return [f"train.max_seconds={self.value}"]
        return []

    def describe(self) -> str:
        """How the report states the budget."""
        return {"recipe": "the recipe's own (train.epochs / train.max_steps)",
                "steps": f"{int(self.value)} optimiser steps per variant",
                "epochs": f"{self.value:g} epochs per variant",
                "seconds": f"{self.value:g} s of training per variant (wall clock, evaluation excluded; stops at the "
                           "next step boundary; the learning-rate schedule still spans the recipe's epochs/steps)"}[self.kind]


# eight presets of the sentiment recipe at 200 steps of 32 fit in the 30 minutes a comparison may take on 2 CPU cores
DEFAULT_BUDGET_STEPS = 200
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_budget(text: str | None) -> Budget:
    """``200`` or ``200steps`` -> steps; ``2ep`` -> epochs; ``90s``, ``5m``, ``1.5h`` -> wall-clock seconds.

    No budget means ``DEFAULT_BUDGET_STEPS`` steps, not the recipe's own: a recipe's epochs are sized for one model,
    and eight variants of the sentiment recipe at its 2 epochs took hours here. ``recipe`` asks for the recipe's own.
    """
    if text is None:
        return Budget("steps", DEFAULT_BUDGET_STEPS)
    if text.strip().lower() in ("", "recipe"):
        return Budget("recipe")
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    unit = found.group(2) if found else ""
    if found and float(found.group(1)) > 0:
        number = float(found.group(1))
        if unit in ("", "step", "steps") and number.is_integer():
            return Budget("steps", number)
        if unit in ("ep", "epoch", "epochs"):
            return Budget("epochs", number)
        if unit in _UNITS:
            return Budget("seconds", number * _UNITS[unit])
    raise RecipeError(f"--budget '{text}': expected a step count (300), epochs (2ep), or a time (90s, 5m, 1h)")


def gradual_unfreeze_stages(steps: int, blocks: int) -> list[str]:
    """Spread gradual unfreezing over a step budget: one stage per block plus the head-only start.

    Unfreezing once per epoch (the ULMFiT default) would never get past the top block in a budget shorter than an
    epoch, and the variant would quietly be feature extraction.
    """
    return [f"strategy.every_steps={max(1, steps // (blocks + 1))}"]
