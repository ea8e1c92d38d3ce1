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

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Fixed:
    """A parameter that must not change in training, kept as a digest of its bytes instead of a copy.

    A copy of a frozen backbone would double the model's memory for a number that is 0 by construction; the digest
    still shows it if a frozen weight did change.
    """

    digest: str


def digest(tensor: torch.Tensor) -> str:
    """BLAKE2b of a tensor's bytes, read in place."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data).hexdigest()


def snapshot(model: nn.Module, fixed: set[str] | None = None) -> dict[str, torch.Tensor | Fixed]:
    """Detached float32 CPU copies of every parameter, keyed by ``named_parameters`` names.

    Copies (not references) are needed because the optimiser updates parameters in place;
    float32 on CPU so that bf16/GPU weights compare exactly and do not hold accelerator memory.
    Names in ``fixed`` (parameters no optimiser holds) get a ``Fixed`` digest instead of a copy.
    """
    fixed = fixed or set()
    return {name: Fixed(digest(p)) if name in fixed else p.detach().to(device="cpu", dtype=torch.float32).clone()
            for name, p in model.named_parameters()}


def weight_drift(
    before: dict[str, torch.Tensor | Fixed],
    model_or_after: nn.Module | dict[str, torch.Tensor],
    groups: dict[str, int] | None = None,
) -> dict:
    """Relative weight change overall and per group, plus how many parameters moved at all.

    Returns ``overall`` (float), ``per_group`` ({group: float}, only when ``groups`` maps
    parameter names to a group such as block depth; names missing from ``groups`` count only
    towards ``overall``), ``n_compared`` (tensors present on both sides), ``tensors_changed``
    and ``elements_changed`` (how many tensors / scalar weights differ at all, which shows at a
    glance whether a freezing strategy really froze what it claimed). A group whose weights are
    all zero after training reports 0.0 if they did not move and inf if they did. ``fixed_changed``
    (only when not empty) names ``Fixed`` parameters whose bytes changed anyway.
    """
    # the live parameters, one at a time: a second snapshot and float64 copies of the embedding matrix would raise
    # the run's peak memory by several times the model's size just for these few numbers
    after = dict(model_or_after.named_parameters()) if isinstance(model_or_after, nn.Module) else model_or_after
    diff_sq: dict[int | None, float] = {}
    norm_sq: dict[int | None, float] = {}
    n_compared = tensors_changed = elements_changed = 0
    fixed_changed: list[str] = []
    for name, old in before.items():
        if name not in after:
            continue
        new = after[name].detach().to(device="cpu", dtype=torch.float32)
        if isinstance(old, Fixed):  # unchanged (delta 0) unless its bytes differ, which is reported by name
            n_compared += 1
            keys = [None] + ([groups[name]] if groups is not None and name in groups else [])
            if digest(after[name]) != old.digest:
                fixed_changed.append(name)
                tensors_changed += 1
                elements_changed += new.numel()
            for key in keys:
                diff_sq.setdefault(key, 0.0)
                norm_sq[key] = norm_sq.get(key, 0.0) + _square_norm(new)
            continue
        if new.shape != old.shape:
            raise ValueError(
                f"weight_drift: parameter {name!r} has shape {tuple(old.shape)} before and {tuple(new.shape)} after; "
                "take both snapshots of the same model."
            )
        delta = new - old
        n_compared += 1
        changed = int(torch.count_nonzero(delta))
        elements_changed += changed
        tensors_changed += int(changed > 0)
        keys: list[int | None] = [None]
        if groups is not None and name in groups:
            keys.append(groups[name])
        for key in keys:  # squared norms summed in float64, without float64 copies of the tensors
            diff_sq[key] = diff_sq.get(key, 0.0) + _square_norm(delta)
            norm_sq[key] = norm_sq.get(key, 0.0) + _square_norm(new)
    result: dict = {
        "overall": _relative(diff_sq.get(None, 0.0), norm_sq.get(None, 0.0)),
        "n_compared": n_compared,
        "tensors_changed": tensors_changed,
        "elements_changed": elements_changed,
    }
    if fixed_changed:  # frozen weights that moved anyway: a bug worth seeing (their size of change is unknown)
        result["fixed_changed"] = fixed_changed
    if groups is not None:
        result["per_group"] = {
            key: _relative(diff_sq[key], norm_sq[key]) for key in sorted(k for k in diff_sq if k is not None)
        }
    return result


def _square_norm(tensor: torch.Tensor, chunk: int = 1 << 20) -> float:
    """Sum of squares in float64, a million elements at a time (a float64 copy of a whole embedding is ~100 MB)."""
    flat = tensor.reshape(-1)
    return sum(float(torch.linalg.vector_norm(part, dtype=torch.float64)) ** 2 for part in flat.split(chunk))


def _relative(diff_sq: float, norm_sq: float) -> float:
    """sqrt(diff_sq / norm_sq), with the zero-norm cases made explicit."""
    if norm_sq == 0.0:
        return 0.0 if diff_sq == 0.0 else math.inf
    return math.sqrt(diff_sq / norm_sq)
