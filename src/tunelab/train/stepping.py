"""Optimisers and the update they make: one optimiser for most tasks, several for a task that owns its step (a GAN
trains a generator and a discriminator, each with its own optimiser, rate and schedule).

Every update is the same sequence, whoever asks for it: forward/backward over the global batch in micro-batches
(each micro-batch's summed loss divided by the loss terms of the whole global batch, so accumulation and several
processes equal one big batch), gradient clipping, the NaN/inf check, then that optimiser's step or a counted skip.
A task with ``train_step`` calls ``Stepper.update`` once per network it trains, in its own order; the loop steps
every schedule once per loop step, so a resumed run finds each one where the uninterrupted run had it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from tunelab.errors import RunError
from tunelab.recipe import Recipe
from tunelab.tasks.base import OptimizerGroup
from tunelab.train.optim import make_optimizer, make_scheduler, param_groups

MODEL = "model"  # the one optimiser of a task that does not own its step (checkpoints name it optimizer.pt)
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def build_optimizers(model: nn.Module, recipe: Recipe, groups: dict[str, OptimizerGroup] | None,
                     strategy_groups: Callable[[], list[dict]], total: int
                     ) -> tuple[dict[str, torch.optim.Optimizer], dict[str, LambdaLR]]:
    """AdamW and its schedule per optimiser: the strategy's parameter groups in one optimiser, or one per group the
    task declares. The schedules stay unprepared (accelerate would step them once per process)."""
    if groups is None:
        optimizer = make_optimizer(strategy_groups(), recipe)
        return {MODEL: optimizer}, {MODEL: make_scheduler(optimizer, recipe, total)}
    named = dict(model.named_parameters())
    optimizers, schedulers = {}, {}
    for name, group in groups.items():
        params = [named[n] for n in group.names]
        optimizer = torch.optim.AdamW([{"params": params, "names": list(group.names)}], lr=group.lr,
                                      betas=group.betas or recipe.optim.betas, eps=recipe.optim.eps,
                                      weight_decay=group.weight_decay)
        optimizers[name], schedulers[name] = optimizer, make_scheduler(optimizer, recipe, total, group.schedule)
    return optimizers, schedulers


def optimizer_objects(optimizers: dict[str, Any], schedulers: dict[str, LambdaLR]) -> dict[str, Any]:
    """What a checkpoint keeps of them: optimizer.pt and scheduler.pt for one, optimizer.NAME.pt ... for several."""
    if list(optimizers) == [MODEL]:
        return {"optimizer": optimizers[MODEL].state_dict(), "scheduler": schedulers[MODEL].state_dict()}
    return {f"{kind}.{name}": part[name].state_dict() for name in optimizers
            for kind, part in (("optimizer", optimizers), ("scheduler", schedulers))}


def load_optimizer_objects(optimizers: dict[str, Any], schedulers: dict[str, LambdaLR], objects: dict[str, Any],
                           where: str) -> None:
    """Put every optimiser's and schedule's state back; a checkpoint lacking one is refused by name."""
    wanted = optimizer_objects(optimizers, schedulers)
    missing = sorted(set(wanted) - set(objects))
    if missing:
        raise RunError(f"{where}: checkpoint lacks {', '.join(missing)} (it was written for other optimisers: a "
                       "different task or recipe); start a new run")
    single = list(optimizers) == [MODEL]
    for name in optimizers:
        optimizers[name].load_state_dict(objects["optimizer" if single else f"optimizer.{name}"])
        schedulers[name].load_state_dict(objects["scheduler" if single else f"scheduler.{name}"])


def non_finite(loss: float, grad_norm: torch.Tensor | None) -> str | None:
    """What went non-finite in an update, if anything: the loss, or (with finite loss) the gradient norm."""
    if not math.isfinite(loss):
        return f"the training loss became {loss}"
    if grad_norm is not None and not math.isfinite(float(grad_norm)):
        return f"the gradient norm became {float(grad_norm)}"
    return None


class Stepper:
    """Makes the updates of one loop step over its global batch; a task's ``train_step`` receives it.

    ``features`` is the global batch, ``index`` the loop step in hand (0-based), ``skipped`` the updates skipped
    for a NaN/inf so far in this step (train.on_nan: skip)."""

    def __init__(self, acc: Accelerator, model: nn.Module, task: Any, recipe: Recipe, optimizers: dict[str, Any],
                 forward: Callable[[], contextlib.AbstractContextManager[nn.Module]],
                 nan_message: Callable[[str], str]) -> None:
        self.acc, self.model, self.task, self.recipe = acc, model, task, recipe
        self.optimizers, self.forward, self.nan_message = optimizers, forward, nan_message
        self.params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}
        self.features: list[dict[str, Any]] = []
        self.index, self.skipped, self.augment = 0, 0, True

    def begin(self, features: list[dict[str, Any]], index: int, augment: bool) -> None:
        self.features, self.index, self.skipped, self.augment = features, index, 0, augment

    def update(self, name: str, loss_sum: LossFn) -> float:
        """One update of optimiser ``name`` from ``loss_sum(model, batch)`` (a sum over the batch's loss terms) over
        the global batch; returns the mean loss. Gradients of every other network are cleared, never applied."""
        if name not in self.optimizers:
            raise RunError(f"no optimiser '{name}'; this run has {', '.join(self.optimizers)}")
        loss = self._backward(loss_sum)
        limit = self.recipe.train.max_grad_norm
        params = self.model.parameters() if name == MODEL else self.params[name]
        norm = self.acc.clip_grad_norm_(params, limit) if limit else None
        fault = non_finite(loss, norm)  # from all-reduced values, so every process takes the same branch
        if fault and self.recipe.train.on_nan == "stop":
            raise RunError(self.nan_message(fault if name == MODEL else f"{fault} in the {name} update"))
        if fault:
            self.skipped += 1
        else:
            self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)
        if name != MODEL:  # the backward also reached the other networks (a generator's loss through the critic)
            self.model.zero_grad(set_to_none=True)
        return loss

    def _backward(self, loss_sum: LossFn) -> float:
        """Forward/backward over the global batch in micro-batches; the all-reduced mean loss."""
        count = self.task.count(self.features)
        world, rank = self.acc.num_processes, self.acc.process_index
        size = math.ceil(len(self.features) / self.recipe.train.grad_accum)
        chunks = [self.features[s : s + size] for s in range(0, len(self.features), size)]
        total = torch.zeros(())
        for k, chunk in enumerate(chunks):
            mine = chunk[rank::world]
            scale = world / count
            if not mine:  # keep collective ops in step: a zero-weighted forward on someone else's example
                mine, scale = chunk[:1], 0.0
            batch = {key: value.to(self.acc.device) for key, value in self.task.collate(mine, train=self.augment).items()}
            sync = contextlib.nullcontext() if k == len(chunks) - 1 else self.acc.no_sync(self.model)
            with sync, self.forward() as model:
                loss = loss_sum(model, batch)
                self.acc.backward(loss * scale)
            total += loss.detach().float().cpu() * (scale > 0)
        total = self.acc.reduce(total.to(self.acc.device), reduction="sum").cpu() if world > 1 else total
        return float(total) / count


def strategy_param_groups(model: nn.Module, recipe: Recipe, candidates: list[str], strategy: Any) -> Callable[[], list[dict]]:
    """The strategy's AdamW groups, built only when the task declares none of its own."""
    return lambda: param_groups(model, recipe, candidates, strategy.depth_map(model), strategy.default_head_lr)
