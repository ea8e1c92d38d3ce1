"""Run a frozen part of the model once, keep what it computes, and let later epochs skip it.

When the bottom of a model is frozen and runs without dropout, its output for an example never changes, so
computing it every epoch is wasted work. Two caches use that:

- ``head`` (feature_extraction, ``strategy.cache_features``): the input of the new head (for
  ``BertForSequenceClassification``, the pooled output after the eval-mode dropout). Training and evaluation then
  run only the head.
- ``boundary`` (freeze, ``strategy.cache_boundary``): the hidden states entering the lowest trainable block. The
  frozen stem (embeddings) and blocks below it are swapped out while the cache is active, so the model runs only
  its trainable blocks and what sits above them.

Examples are found by a key the task gives for each row of a model-input batch (``Task.cache_keys``: the unpadded
token ids for text, the pixels for images), so the task's own collation, loss and evaluation run unchanged: the cache
answers whatever batches they form. Each cache checks itself once when built: a probe batch
through the cache must give the plain model's logits, else the run goes on the plain path and says why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tunelab.errors import ModelError
from tunelab.strategies import layers
from tunelab.strategies.base import head_modules
from tunelab.tasks.base import Task

Key = tuple
PROBE_ATOL = 1e-4  # logits through the cache vs the plain model; float32 batching noise is ~1e-6


class Unsupported(Exception):
    """The cache cannot serve this model or run; the message says why (it goes into the run summary)."""


class _Stop(Exception):
    """Raised by a hook once the cached tensor is captured, so the rest of the forward pass is skipped."""


def row_keys(task: Task, inputs: dict[str, torch.Tensor]) -> tuple[list[Key], list[int]]:
    """Each row's key and length, from the task; a batch the task cannot key makes the cache unusable."""
    try:
        return task.cache_keys(inputs)
    except ValueError as err:
        raise Unsupported(str(err)) from None


class Store:
    """Per-example tensors in one flat buffer: one row per token (hidden states) or one row (a pooled vector)."""

    def __init__(self) -> None:
        self.index: dict[Key, tuple[int, int]] = {}
        self.values: torch.Tensor | None = None
        self.used = 0
        self.per_token = False

    def reserve(self, rows: int, width: int, dtype: torch.dtype, per_token: bool) -> None:
        self.values = torch.empty(rows, width, dtype=dtype)
        self.per_token = per_token

    def add(self, keys: list[Key], lengths: list[int], batch: torch.Tensor) -> None:
        """Copy a captured batch (B, H) or (B, T, H) in; keys already present are skipped (same ids, same states)."""
        assert self.values is not None
        for i, (key, n) in enumerate(zip(keys, lengths)):
            if key in self.index:
                continue
            rows = batch[i, :n] if self.per_token else batch[i : i + 1]
            self.values[self.used : self.used + len(rows)] = rows.to("cpu", self.values.dtype)
            self.index[key] = (self.used, len(rows))
            self.used += len(rows)

    def gather(self, keys: list[Key], width: int, device: torch.device) -> torch.Tensor:
        """The cached tensors of a batch, (B, H) or right-padded with zeros to (B, width, H)."""
        assert self.values is not None
        try:
            spans = [self.index[key] for key in keys]
        except KeyError:
            raise Unsupported("an example reached the model that was not cached (the cache covers train and "
                              "validation only)") from None
        if not self.per_token:
            return self.values[[start for start, _ in spans]].to(device)
        out = torch.zeros(len(keys), width, self.values.shape[1], dtype=self.values.dtype)
        for i, (start, n) in enumerate(spans):
            out[i, :n] = self.values[start : start + n]
        return out.to(device)

    @property
    def nbytes(self) -> int:
        return 0 if self.values is None else self.values[: self.used].nelement() * self.values.element_size()


def _capture(model: nn.Module, module: nn.Module, store: Store, features: list[dict[str, Any]], task: Task,
             batch_size: int, device: torch.device, stop: bool) -> None:
    """Run the model over features (longest first, so the buffer is sized by the first batch) and store the input
    ``module`` receives; with ``stop`` the forward pass ends there."""
    total = sum(task.length(f) for f in features)
    state: dict[str, Any] = {}

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        seen = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        if store.values is None:
            per_token = seen.dim() == 3
            store.reserve(total if per_token else len(features), seen.shape[-1], seen.dtype, per_token)
        store.add(state["keys"], state["lengths"], seen)
        if stop:
            raise _Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    order = sorted(range(len(features)), key=lambda i: -task.length(features[i]))
    try:
        with torch.no_grad():  # not inference_mode: the cached tensors feed autograd later
            for start in range(0, len(order), batch_size):
                batch = task.collate([features[i] for i in order[start : start + batch_size]])
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                state["keys"], state["lengths"] = row_keys(task, inputs)
                with contextlib.suppress(_Stop):
                    model(**inputs)
    finally:
        handle.remove()


class HeadReplay(nn.Module):
    """Stands in for the whole model: looks up each row's cached head input and runs only the head."""

    def __init__(self, head: nn.Module, store: Store, task: Task) -> None:
        super().__init__()
        self.head = head
        self.store = store
        self.task = task

    def forward(self, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        keys, _lengths = row_keys(self.task, inputs)
        first = next(iter(inputs.values()))
        width = first.shape[1] if first.dim() > 1 else 1
        return SequenceClassifierOutput(logits=self.head(self.store.gather(keys, width, first.device)))


class StemReplay(nn.Module):
    """Stands in for the stem: returns the boundary hidden states that the model-level hook looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.next_output: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out, self.next_output = self.next_output, None
        if out is None:
            raise RuntimeError("StemReplay called without a looked-up batch; the cache hook is not installed")
        return out


@dataclass
class Cache:
    """A built cache: ``active(model)`` yields the module to run forward passes on while it is in use."""

    kind: str
    store: Store
    owner: nn.Module  # the unwrapped model it was built from: the lookup hook sits on it, under any wrapper
    task: Task
    head: nn.Module | None = None
    parent: nn.Module | None = None  # boundary cache: the module owning the stem and the one owning the blocks
    stem_attr: str = ""
    stem: nn.Module | None = None
    stack_parent: nn.Module | None = None
    stack_attr: str = ""
    full_stack: nn.ModuleList | None = None
    short_stack: nn.ModuleList | None = None
    boundary: int = 0
    seconds: float = 0.0

    @contextlib.contextmanager
    def active(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run forward passes through the cache inside this block; the model is whole again after it.

        Yields what to call: the model itself (possibly wrapped for several processes) for the boundary cache, a
        head-only stand-in for the head cache.
        """
        if self.kind == "head":
            yield HeadReplay(self.head, self.store, self.task)
            return
        replay = StemReplay()

        def lookup(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            keys, _ = row_keys(self.task, {"input_ids": ids, "attention_mask": kwargs.get("attention_mask")})
            replay.next_output = self.store.gather(keys, ids.shape[1], ids.device)

        handle = self.owner.register_forward_pre_hook(lookup, with_kwargs=True)
        setattr(self.parent, self.stem_attr, replay)
        setattr(self.stack_parent, self.stack_attr, self.short_stack)
        try:
            yield model
        finally:
            handle.remove()
            setattr(self.parent, self.stem_attr, self.stem)
            setattr(self.stack_parent, self.stack_attr, self.full_stack)

    def describe(self) -> str:
        what = "head inputs" if self.kind == "head" else f"hidden states entering block {self.boundary}"
        return (f"on: {what} of {len(self.store.index)} examples cached ({self.store.nbytes / 2**20:.1f} MiB, "
                f"built in {self.seconds:.1f} s)")


def _probe_matches(model: nn.Module, cache: Cache, features: list[dict[str, Any]], task: Task,
                   device: torch.device) -> float:
    """Largest logit difference between the plain model and the cache on a few short and long examples."""
    by_length = sorted(features, key=task.length)
    probe = by_length[:2] + by_length[len(by_length) // 2 : len(by_length) // 2 + 2] + by_length[-2:]
    batch = {k: v.to(device) for k, v in task.collate(probe).items() if k != "labels"}
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            plain = model(**batch).logits.float()
            with cache.active(model) as replay:
                cached = replay(**batch).logits.float()
    finally:
        for module, mode in was_training.items():
            module.train(mode)
    return (plain - cached).abs().max().item()


def build_cache(kind: str, model: nn.Module, splits: list[list[dict[str, Any]]], task: Task,
                batch_size: int, device: torch.device) -> Cache:
    """Run the frozen part once over every example of ``splits`` and return the checked cache.

    ``kind`` is ``head`` or ``boundary``. Raises Unsupported (with the reason) when this model or run cannot use it.
    """
    started = time.perf_counter()
    features = [f for split in splits for f in split]
    store = Store()
    if kind == "head":
        heads = head_modules(model)
        if len(heads) != 1:
            raise Unsupported(f"the model has {len(heads)} new head modules; the feature cache handles one")
        cache = Cache("head", store, model, task, head=model.get_submodule(heads[0]))
        capture_at, stop = cache.head, False
    else:
        if getattr(task, "tokenizer", None) is None:
            raise Unsupported("the boundary cache finds examples by their token ids, and this task has no tokens")
        try:
            stem_path, stem, stack_path, blocks, boundary = layers.frozen_bottom(model)
        except ModelError as err:
            raise Unsupported(str(err)) from None
        stem_parent, _, stem_attr = stem_path.rpartition(".")
        stack_parent, _, stack_attr = stack_path.rpartition(".")
        cache = Cache("boundary", store, model, task, parent=model.get_submodule(stem_parent) if stem_parent else model,
                      stem_attr=stem_attr, stem=stem,
                      stack_parent=model.get_submodule(stack_parent) if stack_parent else model,
                      stack_attr=stack_attr, full_stack=blocks, short_stack=nn.ModuleList(list(blocks)[boundary:]),
                      boundary=boundary)
        capture_at, stop = (blocks[boundary], True) if boundary < len(blocks) else (None, False)
        if capture_at is None:
            raise Unsupported("every block is frozen: use strategy feature_extraction, which caches the head's input")
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        _capture(model, capture_at, store, features, task, batch_size, device, stop)
    finally:
        for module, mode in was_training.items():
            module.train(mode)
    worst = _probe_matches(model, cache, features, task, device)
    if not worst <= PROBE_ATOL:
        raise Unsupported(f"logits through the cache differ from the plain model's by {worst:.2e} (> {PROBE_ATOL})")
    cache.seconds = time.perf_counter() - started
    return cache


def cache_kind(strategy: Any) -> str | None:
    """Which cache the recipe asks for: ``head``, ``boundary`` or None (off, or a strategy without one)."""
    cfg = strategy.cfg
    if strategy.name == "feature_extraction" and getattr(cfg, "cache_features", False):
        return "head"
    if strategy.name == "freeze" and getattr(cfg, "cache_boundary", False):
        return "boundary"
    return None


def prepare(strategy: Any, model: nn.Module, splits: list[list[dict[str, Any]]], task: Task, batch_size: int,
            device: torch.device, processes: int) -> tuple[Cache | None, str | None]:
    """The cache this run asked for, built, and a line for the run summary (None when the recipe asks for none)."""
    kind = cache_kind(strategy)
    if kind is None:
        return None, None
    if kind == "head" and processes > 1:
        return None, "off: the head-only stand-in is not wrapped for several processes, so it would not sync gradients"
    try:
        cache = build_cache(kind, model, splits, task, batch_size, device)
    except Unsupported as why:
        return None, f"off: {why}"
    return cache, cache.describe()
