"""AdamW parameter groups and learning-rate schedules.

Groups exist for three reasons: no weight decay on biases and normalisation weights (decaying them only hurts),
a separate learning rate for new layers (``optim.head_lr``), and discriminative learning rates
(``optim.layer_lr_decay``: each block below the top trains at ``decay`` times the rate of the one above, ULMFiT).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from tunelab.recipe import Recipe


def _no_decay(name: str, param: nn.Parameter) -> bool:
    lowered = name.lower()
    # IA3 scaling vectors start at 1 and are stored as (n, 1) matrices: decaying them towards 0 shrinks activations
    return param.ndim < 2 or "norm" in lowered or lowered.endswith(".bias") or ".ia3_l." in lowered


def param_groups(
    model: nn.Module, recipe: Recipe, candidates: list[str], depth: dict[str, int] | None = None,
    default_head_lr: float | None = None,
) -> list[dict]:
    """One AdamW group per (learning rate, decay) pair over the parameters that may ever train.

    ``candidates`` are the names the strategy may train at some point (gradual unfreezing starts with few of them
    trainable); ``depth`` maps names to 0 (embeddings) .. N+1 (after the last block) for layer-wise decay;
    ``default_head_lr`` is the strategy's rate for the new head when the recipe sets no ``optim.head_lr``.
    """
    new = set(getattr(model, "tunelab_new_params", []))
    lr, decay = recipe.train.lr, recipe.optim.layer_lr_decay
    head_lr = head_rate(recipe, default_head_lr)
    top = max(depth.values()) if depth else 0
    groups: dict[tuple[float, float], dict] = {}
    named = dict(model.named_parameters())
    for name in candidates:
        param = named[name]
        rate = head_lr if _is_new(name, new) else lr
        if depth is not None and decay != 1.0 and not _is_new(name, new):
            rate = lr * decay ** (top - depth.get(name, top))
        wd = 0.0 if _no_decay(name, param) else recipe.optim.weight_decay
        group = groups.setdefault((rate, wd), {"params": [], "names": [], "lr": rate, "weight_decay": wd})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def head_rate(recipe: Recipe, default_head_lr: float | None) -> float:
    """The new head's peak rate: optim.head_lr, else the strategy's default, else train.lr."""
    return recipe.optim.head_lr or default_head_lr or recipe.train.lr


def _is_new(name: str, new: set[str]) -> bool:
    # peft prefixes names (base_model.model.classifier.weight) and may copy the head (modules_to_save)
    return name in new or any(name.endswith("." + n) or ("." + n.rsplit(".", 1)[0] + ".") in name for n in new)


def make_optimizer(groups: list[dict], recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over the groups (the 'names' key is ours; torch keeps extra keys and ignores them).

    The fused kernel is the same update in one pass over memory: about 10x faster than the default on CPU,
    which is a fifth of a full fine-tuning step of a small encoder. It needs float parameters on one device type.
    """
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() for p in params) and len({p.device.type for p in params}) == 1
    return torch.optim.AdamW(groups, betas=recipe.optim.betas, eps=recipe.optim.eps, fused=fused or None)


def lr_lambda(recipe: Recipe, total_steps: int, schedule: str | None = None) -> Callable[[int], float]:
    """Multiplier of the peak rate at a step: linear warmup, then the recipe's schedule (or ``schedule``, where a
    task gives one of its optimisers its own)."""
    t = recipe.train
    schedule = schedule or t.schedule
    warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "step":
            return t.gamma ** ((step - warmup) // t.step_size)
        return 1.0

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int,
                   schedule: str | None = None) -> LambdaLR:
    """The schedule as a torch LambdaLR, whose state_dict (step count) is all a resume needs."""
    return LambdaLR(optimizer, lr_lambda(recipe, total_steps, schedule))
