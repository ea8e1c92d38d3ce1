"""The training loop: short, readable, on Hugging Face Accelerate (one CPU, several processes, GPUs alike).

Three things it does that plain loops often get wrong:
- accumulation equals a bigger batch: each micro-batch's *summed* loss is divided by the number of loss terms in
  the whole global batch (all micro-batches, all processes), so the gradient is that of one big batch;
- exact resume: batches come from a seeded permutation per epoch, and a checkpoint stores the position in it
  together with model, optimiser, scheduler and RNG states, so a resumed run repeats the uninterrupted one;
- every optimiser step is the same whatever the number of processes: a global batch is split across them.

A task may own its step (``train_step``) and declare several optimisers (``optimizer_groups``): a GAN's generator
and discriminator. The updates themselves are in ``stepping``; checkpoints hold every optimiser and schedule.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from tunelab.errors import RunError
from tunelab.recipe import Recipe
from tunelab.strategies.base import Strategy
from tunelab.tasks.base import Feature, Task
from tunelab.train import checkpoint as ckpt
from tunelab.train import feature_cache, fsdp, speed
from tunelab.train.progress import Progress
from tunelab.train.stepping import (Stepper, build_optimizers, load_optimizer_objects, optimizer_objects,
                                    strategy_param_groups)


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint as JSON."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    out_of_time: bool = False
    skipped_steps: int = 0
    train_seconds: float = 0.0
    one_off_seconds: float = 0.0  # building frozen-feature caches: paid once, not per step
    examples_seen: int = 0
    strategy: dict[str, Any] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)  # fingerprint of every split: a resume must see the same data


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation, optionally grouped by length in mega-batches.

    Grouping sorts each window of 50 batches by length, so batches hold similar lengths and padding is small,
    while the order of batches stays random.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if group_by_length:
        window = batch_size * 50
        order = [i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lambda j: -lengths[j])]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        shuffled = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in shuffled]
    return batches


def total_steps(recipe: Recipe, batches_per_epoch: int) -> int:
    """Optimiser steps for the run: max_steps if set, else epochs (may be fractional) times batches."""
    return recipe.train.max_steps or max(1, math.ceil(recipe.train.epochs * batches_per_epoch))


class Trainer:
    """Owns one training run's model, optimiser and state; ``fit`` runs it, resuming if a checkpoint exists."""

    def __init__(self, recipe: Recipe, task: Task, strategy: Strategy, model: torch.nn.Module,
                 train: list[Feature], validation: list[Feature], run_dir: Path, accelerator: Accelerator,
                 data_fingerprint: dict[str, str] | None = None) -> None:
        self.recipe, self.task, self.strategy = recipe, task, strategy
        self.train_features, self.val_features = train, validation
        self.run_dir, self.acc = run_dir, accelerator
        self.ckpt_dir = run_dir / "checkpoints"
        self.lengths = [task.length(f) for f in train]
        self.per_epoch = math.ceil(len(train) / recipe.train.batch_size)
        self.total = total_steps(recipe, self.per_epoch)
        self.candidates = strategy.trainable_candidates(model)
        self.owned = hasattr(task, "train_step")  # the task makes its own updates (several optimisers)
        if self.owned and accelerator.num_processes > 1:
            raise RunError(f"task.type {recipe.task.type} owns its training step, which runs in one process only "
                           "for now; launch it without accelerate launch --num_processes")
        kind = feature_cache.cache_kind(strategy)
        if kind and fsdp.active(accelerator):
            setting = "cache_features" if kind == "head" else "cache_boundary"
            raise RunError(f"strategy.{setting}: the frozen-feature cache runs part of the model outside FSDP's "
                           f"sharded forward, so it is not supported under FSDP; set strategy.{setting}: false, or "
                           "launch with --multi_gpu (data parallel) instead of --use_fsdp")
        optimizers, self.schedulers = build_optimizers(
            model, recipe, task.optimizer_groups(model) if self.owned else None,
            strategy_param_groups(model, recipe, self.candidates, strategy), self.total)
        # the schedules stay unprepared: accelerate would step them once per process, not once per optimiser step
        self.model, *prepared = accelerator.prepare(model, *optimizers.values())
        self.optimizers = dict(zip(optimizers, prepared))
        self.stepper = Stepper(accelerator, self.model, task, recipe, self.optimizers, self._forward, self._nan_message)
        self.terms: dict[str, float] = {}  # the last step's losses by name (a GAN's d_loss and g_loss)
        self.state = LoopState(data=dict(data_fingerprint or {}))
        self.stop_requested = False
        self.cache: feature_cache.Cache | None = None  # built in fit(): its time is training time
        self.speedups = speed.configure(recipe, accelerator.unwrap_model(self.model))  # what each did, for the summary

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a step checkpoint (main process only; under FSDP every process writes its shard) and prune old
        ones, keeping the best."""
        folder = self.ckpt_dir / f"step-{self.state.step:07d}"
        model = self.acc.unwrap_model(self.model)
        self.state.strategy = self.strategy.state()
        sharded = fsdp.active(self.acc)
        if self.acc.is_main_process:
            ckpt.start(folder)
        self.acc.wait_for_everyone()
        if sharded or self.acc.is_main_process:
            tensors = fsdp.local_parameters(model, self.candidates) | ckpt.buffers(model)
            objects = fsdp.local(optimizer_objects(self.optimizers, self.schedulers)) | {"rng": ckpt.rng_state()}
            suffix = fsdp.shard_suffix(self.acc) if sharded else ""
            ckpt.guarded(folder, lambda: ckpt.write_part(ckpt.temporary(folder), tensors, objects, suffix))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.seal(folder, asdict(self.state))
            best = {f"step-{self.state.best_step:07d}"} if self.state.best_step is not None else set()
            ckpt.prune(self.ckpt_dir, self.recipe.train.keep_checkpoints, best)
        self.acc.wait_for_everyone()
        return folder

    def _read(self, folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
        """A verified checkpoint's tensors, objects and state: under FSDP this process's shard of it."""
        if not fsdp.active(self.acc):
            return ckpt.load_checkpoint(folder)
        fsdp.check_processes(folder, self.acc)
        return ckpt.load_checkpoint(folder, fsdp.shard_suffix(self.acc))

    def _load_weights(self, tensors: dict[str, torch.Tensor], folder: Path) -> None:
        model = self.acc.unwrap_model(self.model)
        if fsdp.active(self.acc):
            fsdp.load_local_parameters(model, tensors, str(folder))
        else:
            model.load_state_dict(tensors, strict=False)

    def restore(self, folder: Path) -> None:
        """Load weights, optimisers, schedules, RNG and loop position from a verified checkpoint."""
        tensors, objects, state = self._read(folder)
        model = self.acc.unwrap_model(self.model)
        missing = set(self.candidates) - set(tensors)
        if missing:
            raise RunError(f"{folder}: checkpoint lacks {len(missing)} trained parameters (e.g. {sorted(missing)[:3]}); "
                           "was it written by a different recipe?")
        self._load_weights(tensors, folder)
        if fsdp.active(self.acc) and "optimizer" in objects:  # one optimiser: a task owning its step is refused
            fsdp.redistribute(self.optimizers["model"], objects["optimizer"])
        load_optimizer_objects(self.optimizers, self.schedulers, objects, str(folder))
        ckpt.set_rng_state(objects["rng"])
        saved = LoopState(**state)
        changed = [name for name in sorted(set(saved.data) | set(self.state.data))
                   if saved.data and saved.data.get(name) != self.state.data.get(name)]
        if changed:
            raise RunError(f"{folder}: the {', '.join(changed)} data differ from what this run trained on (split "
                           f"fingerprints {', '.join(f'{n} {saved.data.get(n)} -> {self.state.data.get(n)}' for n in changed)}); "
                           "a resumed run must see the very same examples. Restore the data, or start a new run.")
        self.state = saved
        self.strategy.load_state(self.state.strategy, model)

    def load_best(self) -> None:
        """Put the best checkpoint's weights back (the final model is the best one, not the last)."""
        if self.state.best_step is None or self.state.best_step == self.state.step:
            return
        folder = self.ckpt_dir / f"step-{self.state.best_step:07d}"
        self._load_weights(self._read(folder)[0], folder)

    def plain_model(self, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The trained model as an ordinary module on every process, for evaluation and final/: the model itself,
        or under FSDP a fresh build (``rebuild``) holding the gathered weights. Every process calls it."""
        model = self.acc.unwrap_model(self.model)
        if not fsdp.active(self.acc):
            return model
        full = fsdp.full_state(model)
        plain = rebuild()
        plain.load_state_dict(full)
        return plain

    # ---- one step ------------------------------------------------------------------------------------------------
    def step(self, batch_ids: list[int]) -> float:
        """One loop step over a global batch: the task's own updates, or forward/backward over the batch in
        micro-batches and one optimiser step; then every schedule steps. Returns the mean loss."""
        self.stepper.begin([self.train_features[i] for i in batch_ids], self.state.step,
                           augment=self.cache is None)  # cached features were computed from un-augmented inputs
        self.terms = (self.task.train_step(self.stepper) if self.owned
                      else {"loss": self.stepper.update("model", self.task.loss_sum)})
        self.state.skipped_steps += self.stepper.skipped
        for scheduler in self.schedulers.values():
            scheduler.step()
        return self.terms["loss"]

    def rates(self) -> dict[str, float]:
        """The current learning rate: 'lr' (the first optimiser's) and, with several, 'lr_NAME' for each."""
        rates = {f"lr_{name}": s.get_last_lr()[0] for name, s in self.schedulers.items()}
        return {"lr": next(iter(rates.values()))} | (rates if len(rates) > 1 else {})

    # ---- evaluation and stopping -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        with self._forward() as model:
            metrics = self.task.evaluate(self.acc.unwrap_model(model), self.val_features, self.recipe.eval.batch_size)
        self.strategy.set_train_mode(self.model)
        return metrics

    def improved(self, value: float) -> bool:
        """Track the best value of the chosen metric; counts evaluations without improvement."""
        best = self.state.best_metric
        delta = self.recipe.train.early_stopping.min_delta if self.recipe.train.early_stopping else 0.0
        better = best is None or (value > best + delta if self.recipe.eval.mode == "max" else value < best - delta)
        if better:
            self.state.best_metric, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
        else:
            self.state.bad_evals += 1
        return better

    # ---- the run -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _ctrl_c_finishes_step(self):  # noqa: ANN202
        """First Ctrl-C: finish the step in hand, checkpoint, stop. A second one interrupts at once."""
        def request_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True
            signal.signal(signal.SIGINT, previous)

        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def fit(self, log: Any) -> LoopState:
        """Train to the budget or until early stopping; ``log(record)`` receives every metrics record.

        Raises KeyboardInterrupt after saving a checkpoint when Ctrl-C was pressed.
        """
        t, name = self.recipe.train, self.recipe.eval.metric
        self.strategy.set_train_mode(self.model)
        self._build_cache()
        progress = Progress(self.total, self.state.step, enabled=self.acc.is_main_process,
                            path=self.run_dir / "progress.json")
        with progress, self._ctrl_c_finishes_step():
            while self.state.step < self.total and not (self.state.stopped_early or self.state.out_of_time):
                batches = epoch_batches(self.lengths, t.batch_size, self.recipe.train_seed, self.state.epoch, t.group_by_length)
                while self.state.batch_in_epoch < len(batches) and self.state.step < self.total:
                    ids = batches[self.state.batch_in_epoch]
                    started = time.perf_counter()
                    loss = self.step(ids)
                    self.state.train_seconds += time.perf_counter() - started
                    self.state.step += 1
                    self.state.batch_in_epoch += 1
                    self.state.examples_seen += len(ids)
                    rates = self.rates()
                    progress.update(self.state.step, loss, rates["lr"],
                                    self.state.examples_seen / max(self.state.train_seconds, 1e-9))
                    if self.state.step % t.log_every == 0:
                        terms = {f"train_{k}": v for k, v in self.terms.items() if k != "loss"}
                        log({"step": self.state.step, "epoch": self._epoch_float(), "train_loss": loss} | terms | rates)
                    end_of_epoch = self.state.batch_in_epoch == len(batches)
                    if end_of_epoch:
                        self.state.epoch += 1
                        self.state.batch_in_epoch = 0
                    if self.strategy.on_step_end(self.state.step, self.state.epoch, end_of_epoch, self.acc.unwrap_model(self.model)):
                        self.strategy.set_train_mode(self.model)
                    self.state.out_of_time = self._out_of_time()
                    due = ((t.eval_every and self.state.step % t.eval_every == 0) or self.state.step == self.total
                           or (end_of_epoch and self.recipe.task.evaluate_each_epoch))
                    due = due or self.state.out_of_time
                    if due:
                        self._eval_and_checkpoint(log, name)
                        if self.state.stopped_early or self.state.out_of_time:
                            break
                    if self._any_process(self.stop_requested):
                        if not due:
                            self.save()
                        raise KeyboardInterrupt
                    if end_of_epoch:
                        break  # the next epoch draws its own order (a resumed run draws it the same way)
        return self.state

    def _eval_and_checkpoint(self, log: Any, name: str) -> None:
        metrics = self.evaluate()
        if name not in metrics:
            raise RunError(f"eval.metric '{name}' is not computed by this task; available: {', '.join(sorted(metrics))}")
        self.improved(float(metrics[name]))
        stop = self.recipe.train.early_stopping
        if stop and self.state.bad_evals >= stop.patience:
            self.state.stopped_early = True
        record = {"step": self.state.step, "epoch": self._epoch_float(), "split": "validation"}
        log(record | {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self.save()

    def _out_of_time(self) -> bool:
        """Whether train.max_seconds is spent on any process."""
        limit = self.recipe.train.max_seconds
        return bool(limit) and self._any_process(self.state.train_seconds >= limit)

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process; every process gets the same answer.

        Why: a stop (Ctrl-C, a time limit) reaches each process at its own moment; under ``accelerate launch``
        torchrun forwards Ctrl-C to each worker separately. One process that stopped alone would checkpoint while
        the others wait in the next step's all-reduce, until torchrun kills them all 30 s later.
        """
        if self.acc.num_processes == 1:
            return flag
        raised = torch.tensor(float(flag), device=self.acc.device)
        return bool(self.acc.reduce(raised, reduction="sum") > 0)

    def _build_cache(self) -> None:
        """Run the frozen part of the model once if the strategy asks for it (see feature_cache); timed as training."""
        started = time.perf_counter()
        self.cache, note = feature_cache.prepare(
            self.strategy, self.acc.unwrap_model(self.model), [self.train_features, self.val_features],
            self.task, self.recipe.eval.batch_size, self.acc.device, self.acc.num_processes)
        self.strategy.set_train_mode(self.model)
        seconds = time.perf_counter() - started
        if note:  # a cache was asked for: its build (or failed attempt) is one-off work, reported apart from steps
            self.speedups[f"{feature_cache.cache_kind(self.strategy)}_cache"] = note
            self.state.one_off_seconds += seconds
        self.state.train_seconds += seconds

    def _forward(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The module forward passes go through: the model, or the model served by the frozen-part cache."""
        return self.cache.active(self.model) if self.cache else contextlib.nullcontext(self.model)

    def _epoch_float(self) -> float:
        return round(self.state.epoch + self.state.batch_in_epoch / self.per_epoch, 4)

    def _nan_message(self, fault: str) -> str:
        """Name the step in hand (not yet counted), its batch, and the checkpoint to go back to."""
        last = ckpt.complete_checkpoints(self.ckpt_dir)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        return (f"{fault} at step {self.state.step + 1} (epoch {self.state.epoch}, batch {self.state.batch_in_epoch} "
                f"of it); {where}. Lower train.lr or check the data; train.on_nan: skip skips such steps instead.")


def seed_everything(seed: int) -> None:
    """Seed every generator tunelab or torch uses, so runs repeat exactly."""
    random.seed(seed)
    torch.manual_seed(seed)
