"""How far fine-tuning moved the weights (the course's eta_TL).

Take a ``snapshot`` before training and call ``weight_drift`` after: the relative change
||theta_after - theta_before|| / ||theta_after|| tells how much of the pretrained solution
was kept, overall and, given a grouping such as transformer block index, per depth.

Names are matched exactly. A model wrapped by peft after the snapshot renames its parameters
(``base_model.model.`` prefix, ``.base_layer.`` inside adapted modules); callers take both
snapshots on the same object (e.g. after wrapping, before training) so that names match.
Parameters present on only one side (new heads, adapters) are not compared.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached float32 CPU copies of every parameter, keyed by ``named_parameters`` names.

    Copies (not references) are needed because the optimiser updates parameters in place;
    float32 on CPU so that bf16/GPU weights compare exactly and do not hold accelerator memory.
    """
    return {name: p.detach().to(device="cpu", dtype=torch.float32).clone() for name, p in model.named_parameters()}


def weight_drift(
    before: dict[str, torch.Tensor],
    model_or_after: nn.Module | dict[str, torch.Tensor],
    groups: dict[str, int] | None = None,
) -> dict:
    """Relative weight change overall and per group, plus how many parameters moved at all.

    Returns ``overall`` (float), ``per_group`` ({group: float}, only when ``groups`` maps
    parameter names to a group such as block depth; names missing from ``groups`` count only
    towards ``overall``), ``n_compared`` (tensors present on both sides), ``tensors_changed``
    and ``elements_changed`` (how many tensors / scalar weights differ at all, which shows at a
    glance whether a freezing strategy really froze what it claimed). A group whose weights are
    all zero after training reports 0.0 if they did not move and inf if they did.
    """
    after = snapshot(model_or_after) if isinstance(model_or_after, nn.Module) else model_or_after
    diff_sq: dict[int | None, float] = {}
    norm_sq: dict[int | None, float] = {}
    n_compared = tensors_changed = elements_changed = 0
    for name, old in before.items():
        if name not in after:
            continue
        new = after[name].to(device="cpu", dtype=torch.float32)
        if new.shape != old.shape:
            raise ValueError(
                f"weight_drift: parameter {name!r} has shape {tuple(old.shape)} before and {tuple(new.shape)} after; "
                "take both snapshots of the same model."
            )
        delta = (new - old).double()
        n_compared += 1
        changed = int(torch.count_nonzero(delta))
        elements_changed += changed
        tensors_changed += int(changed > 0)
        keys: list[int | None] = [None]
        if groups is not None and name in groups:
            keys.append(groups[name])
        for key in keys:
            diff_sq[key] = diff_sq.get(key, 0.0) + float(delta.pow(2).sum())
            norm_sq[key] = norm_sq.get(key, 0.0) + float(new.double().pow(2).sum())
    result: dict = {
        "overall": _relative(diff_sq.get(None, 0.0), norm_sq.get(None, 0.0)),
        "n_compared": n_compared,
        "tensors_changed": tensors_changed,
        "elements_changed": elements_changed,
    }
    if groups is not None:
        result["per_group"] = {
            key: _relative(diff_sq[key], norm_sq[key]) for key in sorted(k for k in diff_sq if k is not None)
        }
    return result


def _relative(diff_sq: float, norm_sq: float) -> float:
    """sqrt(diff_sq / norm_sq), with the zero-norm cases made explicit."""
    if norm_sq == 0.0:
        return 0.0 if diff_sq == 0.0 else math.inf
    return math.sqrt(diff_sq / norm_sq)
