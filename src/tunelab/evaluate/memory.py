"""Memory accounting: what a run really used (RSS) and what a strategy should need (estimate).

The measured numbers are process-wide resident set size, so they include Python, torch and
the data; the estimate counts only the training state of the model, so the two answer
different questions and reports show both.
"""

from __future__ import annotations

import re
import resource
import sys
import threading
from types import TracebackType

import psutil
import torch
from torch import nn

from tunelab.errors import RecipeError

# Optimiser state per trainable parameter, in multiples of the parameter's own size.
OPTIMIZER_STATES: dict[str, int] = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}

# A transformer block's parameter name: "<stack>.<index>." where the stack ends in one of the
# names architectures use (bert encoder.layer, llama model.layers, t5 encoder.block, gpt2 h).
_BLOCK = re.compile(r"^((?:.*?\.)?(?:layer|layers|block|blocks|h))\.(\d+)\.")
# Parameters below every block: if one of them trains, gradients flow through all blocks.
_EMBEDDING_MARKERS = ("embed", "wte", "wpe", "shared", "prompt")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started, in bytes.

    This is the kernel's high-water mark, so it never goes down: use it for a whole run, and
    ``RssSampler`` for the peak of one block of code inside a longer process.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


class RssSampler:
    """Context manager that records the peak RSS reached inside its block.

    A background thread samples the current RSS every ``interval_s`` seconds (plus once on
    entry and once on exit), so several variants measured one after another in the same
    process each get their own peak; ``peak_above_baseline_bytes`` is the part the block
    added. Allocations that live shorter than the interval can be missed.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_above_baseline_bytes(self) -> int:
        """How much the block raised RSS above what it was on entry."""
        return self.peak_bytes - self.baseline_bytes

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self.baseline_bytes = self._process.memory_info().rss
        self.peak_bytes = self.baseline_bytes
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tunelab-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def estimate_training_memory(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    optimizer: str = "adamw",
    bytes_per_param: int = 4,
) -> dict:
    """Rough bytes needed to train ``model`` as currently frozen/unfrozen, part by part.

    Lets a user see what a strategy saves before running it:

    - ``weights``: every parameter (frozen ones must still be held for the forward pass).
    - ``gradients``: trainable parameters only.
    - ``optimizer``: state per trainable parameter (AdamW keeps two moments).
    - ``activations``: saved for backward only in blocks that gradients must pass through,
      i.e. from the lowest block holding a trainable parameter upward (all blocks if an
      embedding or prompt parameter trains; none if only the head trains). Per block we use
      Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
      Models": s*b*h*(34 + 5*a*s/h) bytes for 16-bit activations, scaled by
      ``bytes_per_param / 2``. Blocks are found by parameter name (``<stack>.<i>.``, per stack,
      so encoder and decoder count separately); hidden size and head count come from
      ``model.config``. Without a config, activations are reported as 0.
      Embedding, head, logits and framework overheads are not counted.

    Returns ints: weights, gradients, optimizer, activations, total, plus
    ``activation_blocks`` (how many blocks were counted).
    """
    if optimizer not in OPTIMIZER_STATES:
        raise RecipeError(
            f"estimate_training_memory: unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZER_STATES)}."
        )
    params = list(model.named_parameters())
    n_all = sum(p.numel() for _, p in params)
    n_trainable = sum(p.numel() for _, p in params if p.requires_grad)
    blocks = _blocks_needing_activations(params)
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    activations = 0
    if blocks and hidden and heads:
        s, b, h, a = seq_len, batch_size, hidden, heads
        per_block = s * b * h * (34 + 5 * a * s / h) * bytes_per_param / 2
        activations = int(per_block * blocks)
    parts = {
        "weights": n_all * bytes_per_param,
        "gradients": n_trainable * bytes_per_param,
        "optimizer": n_trainable * bytes_per_param * OPTIMIZER_STATES[optimizer],
        "activations": activations,
    }
    return {**parts, "total": sum(parts.values()), "activation_blocks": blocks}


def _blocks_needing_activations(params: list[tuple[str, nn.Parameter]]) -> int:
    """Count blocks at or above the lowest trainable block of each stack."""
    indices: dict[str, set[int]] = {}
    lowest: dict[str, int] = {}
    embedding_trains = False
    for name, p in params:
        match = _BLOCK.match(name)
        if match is None:
            if p.requires_grad and any(marker in name for marker in _EMBEDDING_MARKERS):
                embedding_trains = True
            continue
        stack, index = match.group(1), int(match.group(2))
        indices.setdefault(stack, set()).add(index)
        if p.requires_grad:
            lowest[stack] = min(lowest.get(stack, index), index)
    if embedding_trains:
        return sum(len(found) for found in indices.values())
    return sum(sum(1 for i in indices[stack] if i >= low) for stack, low in lowest.items())


def format_bytes(n: int) -> str:
    """Human-readable binary size ("1.5 GiB"), for tables and reports."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, i = float(abs(n)), 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    sign = "-" if n < 0 else ""
    return f"{sign}{value:.0f} B" if i == 0 else f"{sign}{value:.1f} {units[i]}"


def measured_activations(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Bytes autograd keeps for backward after one forward pass of ``inputs`` (each storage counted once, the
    parameters themselves left out).

    Why: for CNNs no closed form like the transformer one exists (every stage has its own resolution and width), and
    one forward of a real-size batch answers exactly, frozen parts included: autograd saves nothing where no
    gradient will flow.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return sum(saved.values())
