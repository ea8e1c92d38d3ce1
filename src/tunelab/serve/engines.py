"""Which engine serves which task type: the one place that maps a run's ``task.type`` to what the server does
with it. Engine modules are imported when a run needs them, as the task registry does, so a text run never pays
for importing timm and a classifier never pays for the generation stack.

An engine owns the run's model; the server calls ``work`` only from its one model thread.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import torch

from tunelab.errors import RunError
from tunelab.run import Run
from tunelab.serve.batcher import Job
from tunelab.serve.options import ServeOptions

ENGINES: dict[str, str] = {
    "classification": "tunelab.serve.classify:TextClassifier",
    "image_classification": "tunelab.serve.images:ImageClassifier",
    "causal_lm": "tunelab.serve.generation:Generator",
    "seq2seq": "tunelab.serve.generation:Generator",
}


class Engine(Protocol):
    """What the app needs from an engine: the endpoints it answers and the batched work."""

    endpoints: frozenset[str]  # of "chat", "completions", "classify"

    def why_not(self, endpoint: str) -> str:
        """Why this run does not answer ``endpoint`` (one it lacks), and what to call instead."""

    def work(self, jobs: list[Job]) -> list[Any]:
        """Results for jobs of one batch key (an exception instance for a job that failed alone)."""


def pick_device(wanted: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; an unavailable device is refused by name."""
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError:
        raise RunError(f"--device {wanted!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {wanted}: no CUDA GPU is visible here; use --device cpu")
    return device


def make_engine(run: Run, options: ServeOptions) -> Engine:
    """The engine for a run's task type, with the trained model loaded onto the chosen device."""
    task_type = run.recipe.task.type
    if task_type not in ENGINES:
        raise RunError(f"{run}: tunelab serve does not serve {task_type} runs; it serves {', '.join(ENGINES)}")
    if options.threads:  # process-wide; the model thread is the only one that runs torch
        torch.set_num_threads(options.threads)
    run.model.to(pick_device(options.device)).eval()
    module, _, name = ENGINES[task_type].partition(":")
    return getattr(importlib.import_module(module), name)(run, options)
