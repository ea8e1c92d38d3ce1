"""Evaluation at the run's ``train.precision``.

A model trained under bf16 (or fp16) autocast is evaluated under the same autocast — before training, after it, and
by ``tunelab eval`` — as the transformers Trainer evaluates under its ``bf16``/``fp16`` flags. The figures of a run
then describe the model as it runs at that precision, and on a CPU with bfloat16 matrix units (AVX512-BF16, AMX) the
evaluation gets the same speed-up as training (docs/defaults.md has the measurements). fp32 changes nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn


def evaluation_autocast(model: nn.Module, precision: str) -> AbstractContextManager:
    """The autocast region an evaluation of ``model`` runs in: none for fp32, else bfloat16 or float16 autocast on
    the device that holds the model's weights."""
    if precision == "fp32":
        return nullcontext()
    first = next(model.parameters(), None)
    device = first.device.type if first is not None else "cpu"
    return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
