"""Cross-entropy of a causal LM without its full logits: the output layer runs on the labelled positions only, a
chunk of tokens at a time, each chunk under activation checkpointing, so no chunk's logits (tokens x vocabulary, in
float32: 8 rows of 192 tokens over SmolLM2's 49,152 words are 300 MB, and the backward holds more copies) are kept
for the backward pass. This is the idea of Liger-Kernel's fused linear cross-entropy and Unsloth's chunked loss, in
plain PyTorch: transformers 5.24 has no such loss (its ``logits_to_keep`` drops leading positions only).

The model's own forward runs with its output layer swapped for an identity, so wrappers around it (PEFT, DDP,
Accelerate's autocast) still run, and what comes back as logits are the final hidden states. A model that does more
than ``lm_head(hidden)`` (soft-capped or scaled logits) is caught by :func:`chunking_matches` on the first batch:
the chunked loss must equal the plain one, else the task keeps the plain path. The chunk's head runs in float32
(outside any autocast of the model's forward).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100
CHUNK_TOKENS = 1024  # labelled tokens per chunk: 1024 x 49,152 float32 logits = 200 MB at a time


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def _head_owner(model: nn.Module) -> tuple[nn.Module, str, nn.Module] | None:
    """(parent module, attribute name, output layer) of the model's language-model head, if it has one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)  # DDP
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        return None
    for name, child in base.named_children():
        if child is head:
            return base, name, head
    return None


@contextmanager
def hidden_states_as_logits(model: nn.Module) -> Iterator[nn.Module]:
    """While the block runs, the model's forward returns its final hidden states as ``logits``; yields the head."""
    owner = _head_owner(model)
    if owner is None:
        raise ValueError("the model has no output layer (get_output_embeddings) to chunk")
    parent, name, head = owner
    setattr(parent, name, nn.Identity())
    try:
        yield head
    finally:
        setattr(parent, name, head)


def chunked_loss_sum(model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                     chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Summed cross-entropy of the labelled positions (``targets`` != -100, already shifted to the predicting
    position), the output layer applied ``chunk`` tokens at a time and recomputed in the backward pass."""
    labelled = (targets != IGNORE).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else 0
    with hidden_states_as_logits(model) as head:
        try:
            hidden = model(**inputs, use_cache=False, logits_to_keep=targets.shape[1] - first).logits
        except TypeError:  # a forward without logits_to_keep
            hidden = model(**inputs, use_cache=False).logits
    targets = targets[:, targets.shape[1] - hidden.shape[1]:]
    keep = targets != IGNORE
    hidden, targets = hidden[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        part = (hidden[start : start + chunk], targets[start : start + chunk], head)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, *part, use_reentrant=False)
        else:
            total = total + _chunk_loss(*part)
    return total


@torch.no_grad()
def chunking_matches(model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> bool:
    """Whether the chunked loss equals the plain one on a labelled row of a batch, in eval mode (no dropout, no
    random numbers drawn). A model without a separable output layer, or one that changes the logits after it, fails."""
    if _head_owner(model) is None:
        return False
    rows = (targets != IGNORE).any(1).nonzero()
    if not len(rows):
        return False
    pick = int(rows[0])
    row = {k: v[pick : pick + 1] for k, v in inputs.items()}
    wanted = targets[pick : pick + 1]
    was_training = model.training
    model.eval()
    labelled = (wanted != IGNORE).any(0).nonzero()
    width = wanted.shape[1] - int(labelled[0])
    try:
        try:  # the prompt's logits are not needed here either
            logits = model(**row, use_cache=False, logits_to_keep=width).logits
        except TypeError:
            logits = model(**row, use_cache=False).logits
        plain_targets = wanted[:, wanted.shape[1] - logits.shape[1]:]
        keep = plain_targets != IGNORE
        plain = F.cross_entropy(logits[keep].float(), plain_targets[keep], reduction="sum")
        chunked = chunked_loss_sum(model, row, wanted, chunk=max(1, int((wanted != IGNORE).sum()) // 2))
    except (TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    # under Accelerate's mixed precision the model's forward runs in autocast (it keeps the plain forward as
    # _original_forward) and the chunked head in float32, so the two agree to bfloat16's precision only
    tolerance = 2e-2 if hasattr(model, "_original_forward") else 1e-4
    return bool(torch.allclose(plain, chunked, rtol=tolerance, atol=tolerance))
