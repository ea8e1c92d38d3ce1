"""What the causal-LM and seq2seq tasks share: label padding with -100, batched generation, the cheap loss/perplexity
evaluation used during training, and the costly generate-and-score evaluation used before and after it.

Why two evaluations: generating text is tens of times slower than one forward pass, so the per-eval validation
during training computes only loss and perplexity; BLEU, chrF, ROUGE-L, exact match and the side-by-side samples
are computed once on the untouched model and once on the trained one, on the same held-out examples.
"""

from __future__ import annotations

import string
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.errors import DataError, RunError
from tunelab.evaluate.metrics import generation_metrics, perplexity
from tunelab.recipe import GenerateConfig, Recipe
from tunelab.tasks.base import Feature, TextTask, write_final
from tunelab.tasks.decoding import greedy_decode, greedy_supported, merged_adapters

IGNORE = -100  # the label value PyTorch's cross-entropy skips: prompt tokens and padding
EVAL_TOKENS = 2048  # largest evaluation micro-batch in tokens (bounds the logits' memory: tokens x vocabulary)


def template_fields(template: str) -> list[str]:
    """The column names a prompt template refers to ('{source}' -> ['source'])."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise DataError(f"task.prompt_template {template!r} is not a valid template ({err}); write columns as "
                        "{column} and literal braces as {{ }}") from None


def text_problem(values: dict[str, Any], column: str, role: str, key: str) -> str | None:
    """None if ``values[column]`` is non-empty text, else what is wrong (empty text is an 'empty <role>')."""
    if column not in values:
        return f"missing column '{column}' (the {role}; map it with data.columns.{key})"
    value = values[column]
    if not isinstance(value, str):
        return f"the {role} in column '{column}' is {type(value).__name__}, not text"
    if not value.strip():
        return f"empty {role} in column '{column}'"
    return None


def template_problem(values: dict[str, Any], template: str | None, column: str, role: str, key: str) -> str | None:
    """Check the columns a prompt is built from (the template's fields, or the one prompt column)."""
    if template is None:
        return text_problem(values, column, role, key)
    for field in template_fields(template):
        if field not in values:
            return f"missing column '{field}' (used by task.prompt_template)"
        if not isinstance(values[field], str) or not values[field].strip():
            return f"column '{field}' (used by task.prompt_template) is empty or not text"
    return None


def fill_template(values: dict[str, Any], template: str | None, column: str) -> str:
    """The prompt of a checked row: the template filled from its columns, or the prompt column as is."""
    return values[column] if template is None else template.format_map(values)


def prompt_from_text(template: str | None, text: str) -> str:
    """A user's raw input as a training-style prompt: a one-column template is filled with it, so a translation
    run is asked 'Translate English to Spanish: <text>' exactly as it was trained."""
    if template is None:
        return text
    fields = set(template_fields(template))
    if len(fields) > 1:
        raise RunError(f"task.prompt_template {template!r} uses several columns ({', '.join(sorted(fields))}); "
                       "write the whole prompt yourself and pass --raw")
    return template.format_map({fields.pop(): text}) if fields else template


def pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """Pad lists of ids to the longest, on the right (training) or the left (decoder-only generation)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if left:
            out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        else:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def attention_mask(rows: list[list[int]], left: bool = False) -> torch.Tensor:
    """1 on real tokens, 0 on padding, for rows padded by :func:`pad`."""
    return pad([[1] * len(r) for r in rows], 0, left)


def length_batches(features: list[Feature], key: str, batch_size: int, max_tokens: int = EVAL_TOKENS) -> list[list[int]]:
    """Indices in batches of similar length, at most ``batch_size`` long and about ``max_tokens`` tokens each."""
    order = sorted(range(len(features)), key=lambda i: len(features[i][key]))
    batches, current = [], []
    for i in order:
        longest = len(features[i][key])  # the order is by length: the newest member is the longest
        if current and (len(current) >= batch_size or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def generation_kwargs(cfg: GenerateConfig, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """Arguments of ``model.generate`` for the recipe's options; sampling knobs only when sampling.

    The stop tokens are the model's own (a chat model may end turns with a token other than eos) plus the
    tokenizer's eos, so generation ends where training taught the answer to end.
    """
    stop = getattr(model.generation_config, "eos_token_id", None)
    stop = set(stop if isinstance(stop, list) else [stop] if stop is not None else [])
    if tokenizer.eos_token_id is not None:
        stop.add(tokenizer.eos_token_id)
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams, "do_sample": cfg.do_sample,
                              "repetition_penalty": cfg.repetition_penalty, "eos_token_id": sorted(stop) or None,
                              "pad_token_id": pad_id(tokenizer), "use_cache": True}
    if cfg.do_sample:
        kwargs |= {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
    if cfg.stop:  # transformers stops a sequence once its text ends with one of them
        kwargs |= {"stop_strings": list(cfg.stop), "tokenizer": tokenizer}
    return kwargs


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the first stop string (generation may run a token past it, or stop on another row's)."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text


def pad_id(tokenizer: Any) -> int:
    """The padding id: the tokenizer's, else its eos (decoder-only models often have no pad token)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise DataError("the tokenizer has neither a pad nor an eos token; generation tasks need one of them")


def generate(model: nn.Module, tokenizer: Any, prompts: list[list[int]], cfg: GenerateConfig, batch_size: int,
             decoder_only: bool, fast: bool = True) -> list[str]:
    """Generate for token-id prompts in batches of similar length, with the KV cache; texts in the given order.

    Decoder-only models are padded on the left, so every prompt ends where generation starts. With ``fast`` (the
    default) adapters are merged while generating and greedy decoding lets finished rows leave the batch (see
    :mod:`tunelab.tasks.decoding`); ``fast=False`` is plain ``model.generate`` on the model as it is.
    """
    model.eval()
    device = next(model.parameters()).device
    kwargs = generation_kwargs(cfg, model, tokenizer)
    out: list[str] = [""] * len(prompts)
    features = [{"ids": p} for p in prompts]
    with merged_adapters(model) if fast else nullcontext(model), torch.inference_mode():
        greedy = fast and decoder_only and greedy_supported(model, kwargs)
        for idx in length_batches(features, "ids", batch_size, max_tokens=EVAL_TOKENS * 4):
            rows = [prompts[i] for i in idx]
            ids = pad(rows, kwargs["pad_token_id"], left=decoder_only).to(device)
            mask = attention_mask(rows, left=decoder_only).to(device)
            generated = (greedy_decode(model, ids, mask, kwargs) if greedy
                         else model.generate(input_ids=ids, attention_mask=mask, **kwargs))
            new = generated[:, ids.shape[1]:] if decoder_only else generated
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[i] = cut_at_stop(text.strip(), cfg.stop).strip()
    return out


class GenerationTask(TextTask):
    """Base of the causal-LM and seq2seq tasks: everything but how rows become features and how loss is taken."""

    name = "generation"
    decoder_only = True

    def __init__(self, recipe: Recipe, tokenizer: Any = None) -> None:
        super().__init__(recipe, tokenizer)
        self.pad_id = pad_id(self.tokenizer)

    def build_model(self) -> nn.Module:
        """The pretrained model with its own language-model head: nothing is new, so nothing trains by default."""
        from tunelab.models import load_pretrained

        model = load_pretrained(self.recipe.model.name, self.auto_class(), trust_remote_code=self.recipe.model.trust_remote_code)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.pad_id
        model.tunelab_new_params = []
        return model

    def count(self, features: list[Feature]) -> int:
        return sum(label != IGNORE for f in features for label in f["labels"])

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def eval_collate(self, features: list[Feature]) -> dict[str, torch.Tensor]:
        """Collate for evaluation (never packed)."""
        return self.collate(features)

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Mean loss per target token and perplexity: cheap enough for every validation during training."""
        model.eval()
        device = next(model.parameters()).device
        total, tokens = 0.0, 0
        for idx in length_batches(features, "input_ids", batch_size):
            chosen = [features[i] for i in idx]
            batch = {k: v.to(device) for k, v in self.eval_collate(chosen).items()}
            total += float(self.loss_sum(model, batch))
            tokens += self.count(chosen)
        if not tokens:
            raise RunError("evaluation: no target tokens in the split (every label is masked with -100)")
        return {"loss": total / tokens, "perplexity": perplexity(total, tokens), "target_tokens": tokens}

    def generate_and_score(self, model: nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Generate for held-out examples and score against the references (BLEU, chrF, ROUGE-L, exact match).

        ``outputs`` holds the first ``generate.samples`` (input, reference, prediction) for the report.
        """
        torch.manual_seed(self.recipe.seed)  # sampling, when asked for, repeats
        predictions = generate(model, self.tokenizer, [f["prompt_ids"] for f in features], self.recipe.generate,
                               batch_size, self.decoder_only)
        metrics = generation_metrics(predictions, [f["reference"] for f in features])
        metrics["outputs"] = [{"input": f["input"], "reference": f["reference"], "prediction": p}
                              for f, p in zip(features[: self.recipe.generate.samples], predictions)]
        return metrics

    def save(self, model: nn.Module, folder: Path, strategy: Any) -> None:
        """Write final/: the model in its ecosystem format (HF folder or PEFT adapter) and the tokenizer."""
        write_final(folder, model, strategy, self.tokenizer, {"task": self.name})


def side_by_side(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Per split, the report's samples: input, reference, the untouched model's output and the trained one's.

    Takes the ``outputs`` out of the before/after metric dicts (they are text, not metrics).
    """
    samples = {}
    for split, metrics in after.items():
        outputs = metrics.pop("outputs", None)
        earlier = before.get(split, {}).pop("outputs", None) or [{}] * len(outputs or [])
        if outputs:
            samples[split] = [{"input": o["input"], "reference": o["reference"], "before": e.get("prediction"),
                               "after": o["prediction"]} for o, e in zip(outputs, earlier)]
    return samples
