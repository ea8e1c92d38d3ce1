"""PEFT strategies through the ``peft`` library: lora, dora, ia3, prefix_tuning, prompt_tuning.

The model is wrapped with ``get_peft_model``; the task's new head (``model.tunelab_new_params``) goes into
``modules_to_save`` so it trains in full and is saved inside the adapter folder. The saved final/ is a standard PEFT
adapter folder: ``PeftModel.from_pretrained(base, final_dir)`` restores the trained model, head included.

Targets are checked before any wrapping: a LoRA target that names no module is a recipe error that lists the
layers that exist, instead of peft's error deep inside a run.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import peft
import transformers
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as IA3_FEEDFORWARD
from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_TARGETS
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
from torch import nn

from tunelab.errors import ModelError, RecipeError, RunError
from tunelab.models import portable_name
from tunelab.strategies.base import FROZEN_HEAD_LR, Strategy, head_modules
from tunelab.task_options import TASK_CONFIGS

PEFT_METHODS = ("lora", "dora", "ia3", "prefix_tuning", "prompt_tuning")
MERGEABLE = ("lora", "dora", "ia3")



def adaptable_layers(model: nn.Module) -> list[str]:
    """Distinct last names of the model's linear and convolution layers outside the head: what a target may name."""
    heads = tuple(head + "." for head in head_modules(model))
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
         if isinstance(module, (nn.Linear, nn.Conv2d)) and not (name + ".").startswith(heads)}
    )


def pointwise_layers(model: nn.Module) -> list[str]:
    """Full names of an image model's 1x1 convolutions and linear layers outside the head: LoRA's and IA3's default
    targets on a CNN (they carry most of its weights; peft adapts them as it adapts a linear layer)."""
    heads = tuple(head + "." for head in head_modules(model))
    return [name for name, module in model.named_modules()
            if not (name + ".").startswith(heads) and (
                isinstance(module, nn.Linear)
                or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1))]


def check_targets(model: nn.Module, targets: list[str], key: str) -> None:
    """Refuse targets that match no module (peft's rule: the full name, or a suffix after a dot)."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise RecipeError(
            f"strategy.{key}: {', '.join(repr(t) for t in missing)} names no module of {type(model).__name__}; "
            f"its linear layers are named {', '.join(adaptable_layers(model))} (give a last name, or a dotted "
            "suffix such as 'attention.output.dense')"
        )


def _defaults(mapping: dict[str, list[str]], model: nn.Module, key: str) -> list[str]:
    """peft's default modules for the model's architecture (for image models: ``pointwise_layers``), or a recipe
    error asking for them."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None and any(callable(getattr(m, "group_matcher", None)) for m in model.modules()):
        return pointwise_layers(model)  # a timm image model
    if model_type not in mapping and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return pointwise_layers(model)  # a transformers CNN (ResNet, ConvNeXt, MobileNetV2, EfficientNet)
    if model_type not in mapping:
        raise RecipeError(
            f"strategy.{key}: no default is known for model type {model_type!r}; set it to some of the model's "
            f"linear layers: {', '.join(adaptable_layers(model))}"
        )
    return list(mapping[model_type])


def takes_cache(model_class: type) -> bool:
    """Whether a model's forward takes ``past_key_values``, through which peft inserts a prefix-tuning prefix."""
    return "past_key_values" in inspect.signature(model_class.forward).parameters


def prefix_refusal(model_class: type, task_type: str, model_name: str) -> str | None:
    """Why prefix tuning cannot run on this model class in the installed versions, or None if it can.

    For classification peft hands the prefix to the classifier's forward or its backbone's as ``past_key_values``
    and refuses a model where neither takes it (encoders such as BERT in transformers 5.24, which dropped the
    argument). Decoders and encoder-decoders receive it as a keyword (transformers 5.24 still accepts the name there,
    deprecated), so they run.
    """
    if TASK_CONFIGS[task_type].peft_task_type != "SEQ_CLS":
        return None
    backbone = transformers.AutoModel._model_mapping.get(getattr(model_class, "config_class", None), None)
    if takes_cache(model_class) or (backbone is not None and takes_cache(backbone)):
        return None
    versions = f"transformers {transformers.__version__} and peft {peft.__version__}"
    return (f"strategy prefix_tuning cannot run on model '{model_name}' ({model_class.__name__}) with {versions}: "
            "peft inserts the prefix as a key/value cache (past_key_values), which this model's forward does not "
            "take. Use prompt_tuning (trained virtual tokens in the input), lora or ia3 instead.")


class PeftStrategy(Strategy):
    """One strategy class for every peft method; ``cfg.method`` picks the peft config."""

    default_head_lr = FROZEN_HEAD_LR

    def __init__(self, cfg: Any, task_type: str = "classification") -> None:
        super().__init__(cfg, task_type)
        self.name = cfg.method

    def peft_config(self, model: nn.Module) -> PeftConfig:
        """The peft config for the model, with targets resolved and checked, and the head in modules_to_save."""
        c = self.cfg
        kind = TASK_CONFIGS[self.task_type].peft_task_type
        task_type = TaskType[kind] if kind else None
        heads = head_modules(model) or None
        if c.method in ("lora", "dora"):
            targets = c.target_modules or _defaults(LORA_TARGETS, model, "target_modules")
            check_targets(model, targets, "target_modules")
            return LoraConfig(task_type=task_type, r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                              target_modules=targets, use_dora=c.method == "dora", modules_to_save=heads)
        if c.method == "ia3":
            targets = c.target_modules or _defaults(IA3_TARGETS, model, "target_modules")
            check_targets(model, targets, "target_modules")
            if c.feedforward_modules is not None:
                feedforward = c.feedforward_modules
            else:
                default = _defaults(IA3_FEEDFORWARD, model, "feedforward_modules")
                feedforward = [m for m in default if m in targets]
            outside = [m for m in feedforward if m not in targets]
            if outside:
                raise RecipeError(f"strategy.feedforward_modules: {outside} must also be in strategy.target_modules "
                                  f"({targets})")
            return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward,
                             modules_to_save=heads)
        config = model.config
        if c.method == "prefix_tuning":
            # T5-style configs give the per-head width (d_kv) apart from the model width; the prefix must use it
            token_dim = config.d_kv * config.num_heads if hasattr(config, "d_kv") else None
            return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=c.num_virtual_tokens,
                                      token_dim=token_dim, modules_to_save=heads)
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=c.num_virtual_tokens, modules_to_save=heads)

    def check_model_class(self, model_class: type | None, model_name: str) -> None:
        """Prompts need a model that reads tokens; prefix tuning one that takes a key/value cache (``prefix_refusal``)."""
        if self.cfg.method in ("prefix_tuning", "prompt_tuning") and TASK_CONFIGS[self.task_type].inputs != "tokens":
            raise RecipeError(f"strategy {self.cfg.method} adds virtual tokens, and model '{model_name}' reads "
                              f"{TASK_CONFIGS[self.task_type].inputs}, not tokens; use lora, ia3, bitfit, freeze or "
                              "feature_extraction instead")
        if self.cfg.method == "prefix_tuning" and model_class is not None:
            reason = prefix_refusal(model_class, self.task_type, model_name)
            if reason:
                raise RecipeError(reason)

    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap the model; the wrapper's ``tunelab_new_params`` names the trainable copy of the head."""
        heads = head_modules(model)
        config = self.peft_config(model)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as err:
            raise RecipeError(f"strategy {self.cfg.method}: peft refused {type(model).__name__}: {err}") from err
        trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
        wrapped.tunelab_new_params = sorted(n for n in trainable if any(f"{h}.modules_to_save." in n for h in heads))
        if heads and not wrapped.tunelab_new_params:
            raise ModelError(f"strategy {self.cfg.method}: peft left the new head ({', '.join(heads)}) frozen")
        return wrapped

    def save_model(self, model: nn.Module, folder: Path) -> dict[str, Any]:
        """A standard PEFT adapter folder; the head is inside it (modules_to_save). A catalog base model is recorded
        by its hub id, not by its folder on this machine, so the adapter loads elsewhere too."""
        config = model.peft_config["default"]
        config.base_model_name_or_path = portable_name(config.base_model_name_or_path or "")
        model.save_pretrained(folder)
        return {"format": "peft", "peft_type": str(config.peft_type.value), "method": self.cfg.method}


def merge(model: nn.Module, method: str) -> nn.Module:
    """The plain transformers model with the adapter folded into its weights (LoRA, DoRA, IA3 only)."""
    if method not in MERGEABLE or not isinstance(model, PeftModel):
        raise RunError(f"strategy {method} cannot be merged into the base weights (only {', '.join(MERGEABLE)} can): "
                       "its final/ folder is already what to ship")
    return model.merge_and_unload()
