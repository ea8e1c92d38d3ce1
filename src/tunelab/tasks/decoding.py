"""Faster generation with the same outputs: adapters merged for the duration, and greedy decoding of decoder-only
models in which finished rows leave the batch.

Why by hand: ``model.generate`` keeps every row of a batch until its last row finishes (a finished row keeps running
the model and emitting padding), and a PEFT model runs each adapter beside its base layer at every step. The greedy
loop here makes the forward calls ``generate`` makes (the same position ids, attention mask, KV cache class,
``logits_to_keep=1``, float32 logits and transformers' own stopping criteria and repetition penalty), but drops the
rows that have finished from the batch and from the KV cache. What it does not cover (sampling, beam search,
encoder-decoder models, prompt-learning adapters, generation configs with further logits processors) goes through
``model.generate`` as before; adapters are merged for both.

Merging changes float rounding (W + sBA instead of Wx + sB(Ax)), and a smaller batch may round differently in a
matrix product, so a greedy choice between two tokens whose logits tie to about 1e-6 may differ; tests/
test_decoding.py compares with ``model.generate`` token by token.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# generation-config fields the greedy loop reproduces; any other non-default field sends generation to model.generate
HANDLED = {"max_new_tokens", "num_beams", "do_sample", "repetition_penalty", "eos_token_id", "pad_token_id",
           "bos_token_id", "use_cache", "stop_strings", "output_attentions", "output_hidden_states",
           "transformers_version", "_from_model_config", "temperature", "top_p", "top_k"}


@contextmanager
def merged_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its LoRA/DoRA/IA3 adapters folded into the base weights while the block runs; afterwards the
    very tensors it had before (bit for bit: each merged weight is a new tensor, the original is put back), so a
    model evaluated before training trains exactly as it would have. Other models are yielded as they are."""
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        yield model
        return
    config = model.peft_config.get(getattr(model, "active_adapter", "default")) if isinstance(model, PeftModel) else None
    if config is None or config.is_prompt_learning or str(config.peft_type.value).lower() not in ("lora", "ia3"):
        yield model
        return
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "merge") and not m.merged]
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                for param in layer.get_base_layer().parameters(recurse=False):
                    saved.append((param, param.data))
                    param.data = param.data.clone()  # merged into the copy: the original stays untouched
                layer.merge()
        yield model
    finally:
        for layer in layers:
            layer.merged_adapters = []
        for param, data in saved:
            param.data = data


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers live inside it), else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def greedy_supported(model: nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether :func:`greedy_decode` reproduces ``model.generate(**kwargs)`` for this model and these options."""
    from transformers import GenerationConfig

    base = base_of(model)
    if base.config.is_encoder_decoder or kwargs.get("do_sample") or kwargs.get("num_beams", 1) != 1:
        return False
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False  # the prompt is prepended inside the PEFT wrapper's generate
    if not hasattr(base, "generation_config") or not kwargs.get("use_cache", True):
        return False
    parameters = inspect.signature(base.forward).parameters
    if "cache" not in parameters and "past_key_values" not in parameters:
        return False
    options = {k: v for k, v in kwargs.items() if k != "tokenizer"}  # the tokenizer comes with stop strings
    merged = GenerationConfig.from_dict({**base.generation_config.to_dict(), **options})
    return set(merged.to_diff_dict()) <= HANDLED


def _stopping(kwargs: dict[str, Any]) -> Any:
    from transformers.generation.stopping_criteria import EosTokenCriteria, StoppingCriteriaList, StopStringCriteria

    criteria = StoppingCriteriaList()
    if kwargs.get("stop_strings"):
        criteria.append(StopStringCriteria(kwargs["tokenizer"], kwargs["stop_strings"]))
    if kwargs.get("eos_token_id") is not None:
        criteria.append(EosTokenCriteria(kwargs["eos_token_id"]))
    return criteria


@torch.inference_mode()
def greedy_decode(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Greedy continuation of left-padded prompts, as ``model.generate(input_ids=ids, attention_mask=mask, **kwargs)``
    returns it (prompts, new tokens, padding after a row's stop), but each row leaves the batch once it stops."""
    from transformers import DynamicCache
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    base = base_of(model)
    parameters = inspect.signature(base.forward).parameters
    cache_key = "cache" if "cache" in parameters else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    penalty = kwargs.get("repetition_penalty", 1.0)
    processor = RepetitionPenaltyLogitsProcessor(penalty) if penalty not in (None, 1.0) else None
    criteria = _stopping(kwargs)
    width, budget, pad = ids.shape[1], kwargs["max_new_tokens"], kwargs["pad_token_id"]

    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0) if "position_ids" in parameters else None
    attention = None if bool((mask == 1).all()) else mask  # generate drops a mask of ones, so do we
    cache = DynamicCache(config=base.config.get_text_config(decoder=True))
    rows = torch.arange(ids.shape[0])  # which original row each batch row is
    sequences = ids
    out = torch.full((ids.shape[0], width + budget), pad, dtype=ids.dtype, device=ids.device)
    out[:, :width] = ids
    inputs = ids
    longest = 0
    for step in range(budget):
        call = {"input_ids": inputs.clone(memory_format=torch.contiguous_format), cache_key: cache, "use_cache": True,
                **extra}
        if positions is not None:
            call["position_ids"] = positions[:, -inputs.shape[1]:].clone(memory_format=torch.contiguous_format)
        if attention is not None:
            call["attention_mask"] = attention
        logits = base(**call, return_dict=True).logits[:, -1].to(copy=True, dtype=torch.float32)
        scores = processor(sequences, logits) if processor is not None else logits
        tokens = torch.argmax(scores, dim=-1)
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        out[rows, width + step] = tokens
        longest = step + 1
        done = criteria(sequences, scores) if criteria else torch.zeros_like(tokens, dtype=torch.bool)
        if bool(done.all()):
            break
        if positions is not None:
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        if attention is not None:
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)
        if bool(done.any()):  # finished rows leave the batch and the cache
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, sequences, tokens = rows[keep], sequences[keep], tokens[keep]
            positions = positions[keep] if positions is not None else None
            attention = attention[keep] if attention is not None else None
        inputs = tokens[:, None]
    return out[:, : width + longest]
