"""Process-level speed settings: CPU threads and (optionally) torch.compile, each recorded in the run summary.

Threads: torch starts one intra-op thread per physical core, which is right for one process, but several processes
on one machine (``accelerate launch --num_processes 2``) would each start that many and fight over the cores; we
share the cores out. A single process follows OMP_NUM_THREADS when the user set it (on a machine shared with other
jobs fewer threads than cores run faster). The chosen count is written to the summary, so a slow run shows what it had.

Allocator: glibc serves a large allocation from the heap once a chunk that size was freed (its mmap threshold grows
up to 32 MiB), and a heap returns memory to the OS only from its top, so activations freed every step stay resident
and fragment. A fixed threshold sends every tensor of 1 MiB or more to mmap, which gives it back on free: in the
bench this lowered peak RSS by ~70 MiB on MiniLM, but the page fault per large allocation made full fine-tuning
1.2x slower there and a CNN 1.75x slower (docs/defaults.md), so it is off unless the recipe turns it on
(``train.release_memory``). The setting is process-wide and stays once made.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import psutil
import torch
from torch import nn

from tunelab.recipe import Recipe


def usable_cores() -> int:
    """Physical cores this process may run on (affinity masks and containers can allow fewer than the machine has)."""
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, allowed))


def omp_threads() -> int | None:
    """OMP_NUM_THREADS when it names a positive count (the user's word on a shared machine), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to the recipe's ``train.threads``; else, in a single process, OMP_NUM_THREADS
    when set (as torch itself does); else the cores per local process. Returns the count.

    Under a launcher (LOCAL_WORLD_SIZE > 1) OMP_NUM_THREADS is not followed: torchrun sets it to 1 whenever it is
    unset, which would leave all but one core per process idle; the cores are shared out instead."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = requested or (omp_threads() if local == 1 else None) or max(1, usable_cores() // local)
    torch.set_num_threads(threads)
    return threads


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20


def release_large_frees() -> bool:
    """glibc only: serve allocations of 1 MiB or more with mmap, so freed tensors go back to the OS at once."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def configure(recipe: Recipe, model: nn.Module) -> dict[str, str]:
    """Apply the recipe's speed settings to this process and model; returns what was done, for the summary."""
    done = {"threads": f"{set_threads(recipe.train.threads)} intra-op threads"}
    if recipe.train.release_memory and release_large_frees():
        done["allocator"] = "glibc mmap threshold fixed at 1 MiB: freed tensors return to the OS"
    if recipe.train.compile:
        model.compile()  # in place: parameter names, checkpoints and saving stay as they are
        done["compile"] = "on: torch.compile (inductor), compiled on first use"
    return done
