"""Causal language modelling (decoder models such as SmolLM2): prompt/completion pairs or chat conversations.

A row is either a pair (``prompt`` and ``completion`` columns, or ``task.prompt_template`` over any columns) or a
chat (``messages: [{role, content}]``). Both are rendered with the model's own chat template when it has one, so
the fine-tuned model is asked exactly as it will be used. The loss counts only the answer tokens (every assistant
turn; everything else is labelled -100), or every token with ``task.loss_on: all``.

Which tokens are the answer is found by rendering the conversation up to each assistant turn and taking the
characters that turn adds; token offsets map those characters to tokens. This works for any template that renders
a conversation as the concatenation of its turns, which is checked, without needing generation markers in it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jinja2 import TemplateError
from torch import nn

from tunelab.data.sources import Row
from tunelab.errors import DataError, RecipeError
from tunelab.recipe import GenerateConfig, Recipe
from tunelab.tasks.base import Feature, Prepared
from tunelab.tasks.chunked_loss import chunked_loss_sum, chunking_matches
from tunelab.tasks.classification import too_long_message
from tunelab.tasks.generation import (
    IGNORE,
    GenerationTask,
    attention_mask,
    fill_template,
    generate,
    pad,
    prompt_from_text,
    template_problem,
    text_problem,
)

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


def messages_problem(messages: Any) -> str | None:
    """None if ``messages`` is a usable chat for training, else what is wrong with it."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            return f"message {turn} is not a {{role, content}} object"
        role, content = message["role"], message["content"]
        if role not in ROLES:
            return f"message {turn} has role '{role}', which the chat template does not know; use one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return f"message {turn} ({role}): content is {type(content).__name__}, not text"
        if role == "assistant" and not content.strip():
            return f"message {turn}: empty assistant answer (the target)"
    spoken = [m["role"] for m in messages if m["role"] != "system"]
    if "assistant" not in spoken:
        return "the chat has no assistant turn, so there is nothing to learn; add the answer as an assistant message"
    if spoken[0] != "user":
        return "the chat must start with a user message (after any system message)"
    return None


def plain_prompt(messages: Messages) -> str:
    """Without a chat template (pairs only): the system prompt, if any, and the prompt, a blank line apart."""
    return "\n\n".join(m["content"] for m in messages)


class CausalLMTask(GenerationTask):
    """Fine-tune a decoder-only model on answers; generate with it."""

    name = "causal_lm"
    decoder_only = True

    def __init__(self, recipe: Recipe, tokenizer: Any = None) -> None:
        super().__init__(recipe, tokenizer)
        columns = recipe.data.columns
        self.prompt_col = columns.get("prompt", "prompt")
        self.completion_col = columns.get("completion", "completion")
        self.messages_col = columns.get("messages", "messages")
        self.use_chat = recipe.task.chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.slice_logits = True  # until a model refuses logits_to_keep
        self.chunked: bool | None = None if recipe.train.chunked_loss else False  # None: not probed yet

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    # ---- rows and rendering ------------------------------------------------------------------------------------
    def check_row(self, row: Row) -> str | None:
        values = row.values
        if self.messages_col in values:
            problem = messages_problem(values[self.messages_col])
            if problem is None and not self.use_chat:
                return ("chat messages need a chat template, and the tokenizer has none (or task.chat_template is "
                        "false); give prompt/completion pairs instead")
            return problem
        task = self.recipe.task
        if task.prompt_template is None and self.prompt_col not in values and self.completion_col not in values:
            return (f"no '{self.messages_col}' column and no '{self.prompt_col}'/'{self.completion_col}' columns; give a chat "
                    "(messages: [{role, content}]) or a prompt/completion pair (map columns with data.columns)")
        return (template_problem(values, task.prompt_template, self.prompt_col, "prompt", "prompt")
                or text_problem(values, self.completion_col, "target", "completion"))

    def conversation(self, values: dict[str, Any]) -> Messages:
        """A checked row as chat messages, with the recipe's system prompt first unless the row has its own."""
        if self.messages_col in values:
            messages = [{"role": m["role"], "content": m["content"]} for m in values[self.messages_col]]
        else:
            prompt = fill_template(values, self.recipe.task.prompt_template, self.prompt_col)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": values[self.completion_col]}]
        system = self.recipe.task.system_prompt
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        return messages

    def prompt_ids(self, messages: Messages) -> list[int]:
        """Token ids that ask the model for the next assistant turn after ``messages``."""
        if self.use_chat:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(plain_prompt(messages))["input_ids"]

    def encode(self, messages: Messages) -> tuple[list[int], list[int]]:
        """Token ids of a whole conversation and their labels: answer tokens keep their id, the rest are -100."""
        if not self.use_chat:  # a prompt/completion pair without a chat template: prompt, completion, eos
            prompt = self.prompt_ids(messages[:-1])
            answer = self.tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            return prompt + answer, [IGNORE] * len(prompt) + answer
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            asked = self.tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
            answered = self.tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False)
            if not (answered.startswith(asked) and text.startswith(answered)):
                raise DataError(f"the chat template of '{self.recipe.model.name}' renders a conversation differently from "
                                "its turns one after another, so the answer tokens cannot be located; set "
                                "task.chat_template: false and give prompt/completion pairs")
            spans.append((len(asked), len(answered.rstrip())))  # the answer and its end-of-turn marker
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        labels = [token if any(start <= begin < end for start, end in spans) else IGNORE
                  for token, (begin, _) in zip(ids, encoded["offset_mapping"])]
        return ids, labels

    def featurize(self, rows: list[Row]) -> Prepared:
        task = self.recipe.task
        prepared = Prepared([])
        for row in rows:
            messages = self.conversation(row.values)
            try:
                ids, labels = self.encode(messages)
            except TemplateError as err:  # e.g. a template that only knows alternating user/assistant turns
                prepared.rejected.append((row.where(), f"the chat template refuses this conversation: {err}"))
                continue
            if task.loss_on == "all":
                labels = list(ids)
            labels[0] = IGNORE  # no token predicts the first one
            if len(ids) > task.max_length:
                if not task.truncation:
                    prepared.rejected.append((row.where(), too_long_message(len(ids), task.max_length)))
                    continue
                ids, labels = ids[: task.max_length], labels[: task.max_length]
                prepared.truncated += 1
            if all(label == IGNORE for label in labels):
                prepared.rejected.append((row.where(), f"no answer tokens within task.max_length={task.max_length}"))
                continue
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            user = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
            prepared.features.append({"input_ids": ids, "labels": labels, "prompt_ids": self.prompt_ids(messages[:last]),
                                      "input": user, "reference": messages[last]["content"]})
        return prepared

    # ---- batches and loss --------------------------------------------------------------------------------------
    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        """Right-pad (labels with -100), or with task.packing put several examples in each row."""
        if self.recipe.task.packing:
            return self.pack(features)
        return self.eval_collate(features)

    def eval_collate(self, features: list[Feature]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        return {"input_ids": pad(ids, self.pad_id), "attention_mask": attention_mask(ids),
                "labels": pad([f["labels"] for f in features], IGNORE)}

    def pack(self, features: list[Feature]) -> dict[str, torch.Tensor]:
        """First-fit-decreasing packing into rows of max_length; position ids restart at each example, which makes
        the model's attention mask block-diagonal (no example sees another). Padding is its own block."""
        capacity = max(self.recipe.task.max_length, *(len(f["input_ids"]) for f in features))
        bins: list[list[Feature]] = []
        for feature in sorted(features, key=lambda f: -len(f["input_ids"])):
            home = next((b for b in bins if sum(len(f["input_ids"]) for f in b) + len(feature["input_ids"]) <= capacity), None)
            if home is None:
                bins.append([feature])
            else:
                home.append(feature)
        rows = [[t for f in b for t in f["input_ids"]] for b in bins]
        positions = [[p for f in b for p in range(len(f["input_ids"]))] for b in bins]
        width = max(len(r) for r in rows)
        positions = [p + list(range(width - len(p))) for p in positions]
        return {"input_ids": pad(rows, self.pad_id), "position_ids": torch.tensor(positions),
                "labels": pad([[t for f in b for t in f["labels"]] for b in bins], IGNORE)}

    def plain_loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of each labelled token given the tokens before it, from the model's logits."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        targets = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], IGNORE)], dim=1)
        labelled = (targets != IGNORE).any(0).nonzero()
        first = int(labelled[0]) if len(labelled) else 0
        # the output layer runs only from the batch's first labelled position on: with the loss on answers, the
        # prompt's logits (tokens x vocabulary, the largest tensor of a small model's step) are never made
        logits = self._logits(model, inputs, targets.shape[1] - first)  # without a cache, position ids can separate packed examples
        targets = targets[:, targets.shape[1] - logits.shape[1]:]
        keep = targets != IGNORE
        return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of each labelled token given the tokens before it: by default the output layer runs
        in chunks over the labelled tokens only (``train.chunked_loss``, see :mod:`tunelab.tasks.chunked_loss`),
        once a probe on the first batch showed that this model's chunked loss is its plain loss."""
        if self.chunked is not False:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            targets = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], IGNORE)], dim=1)
            if self.chunked is None:
                self.chunked = chunking_matches(model, inputs, targets)
            if self.chunked:
                return chunked_loss_sum(model, inputs, targets)
        return self.plain_loss_sum(model, batch)

    def _logits(self, model: nn.Module, inputs: dict[str, torch.Tensor], width: int) -> torch.Tensor:
        """Logits of the last ``width`` positions, or of all where the model has no ``logits_to_keep``."""
        if self.slice_logits:
            try:
                return model(**inputs, use_cache=False, logits_to_keep=width).logits
            except TypeError:  # a model whose forward takes no such argument
                self.slice_logits = False
        return model(**inputs, use_cache=False).logits

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.recipe.task.packing:
            check_packing(model, self.recipe.model.name)
        return model

    # ---- use ---------------------------------------------------------------------------------------------------
    def generate(self, model: nn.Module, prompts: list[str], cfg: GenerateConfig | None = None, raw: bool = False,
                 batch_size: int = 16) -> list[str]:
        """Answers to raw prompts, each asked the way training asked (template, system prompt, chat template)."""
        texts = prompts if raw else [prompt_from_text(self.recipe.task.prompt_template, p) for p in prompts]
        system = self.recipe.task.system_prompt
        ids = [self.prompt_ids(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": t}])
               for t in texts]
        return generate(model, self.tokenizer, ids, cfg or self.recipe.generate, batch_size, decoder_only=True)

    def chat(self, model: nn.Module, messages: Messages, cfg: GenerateConfig | None = None) -> str:
        """The next assistant turn of a conversation (for ``tunelab chat``)."""
        if not self.use_chat:
            raise RecipeError(f"'{self.recipe.model.name}' has no chat template (or task.chat_template is false); "
                              "use tunelab generate instead")
        system = self.recipe.task.system_prompt
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        return generate(model, self.tokenizer, [self.prompt_ids(messages)], cfg or self.recipe.generate, 1, True)[0]


@torch.no_grad()
def check_packing(model: nn.Module, name: str) -> None:
    """Refuse packing for a model whose attention would let packed examples see each other.

    Why an experiment rather than a list: whether position ids reset the mask depends on the architecture's code
    in this transformers version; the logits of an example must be the same alone and packed after another.
    """
    was_training = model.training
    model.eval()
    first, second = [5, 6, 7, 8], [9, 10, 11]
    alone = model(input_ids=torch.tensor([second]), use_cache=False).logits[0]
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))])
    packed = model(input_ids=torch.tensor([first + second]), position_ids=positions, use_cache=False).logits[0, len(first):]
    model.train(was_training)
    if not torch.allclose(alone, packed, atol=1e-4, rtol=1e-3):
        raise RecipeError(f"task.packing: '{name}' ({type(model).__name__}) lets packed examples attend to each other "
                          "in this transformers version; set task.packing: false")
