"""Generation for the server: one ``model.generate`` call for a batch of prompts, with what an API answer needs
beyond the text (token counts, why it ended) and, for a streamed answer, its text as it grows.

The batch-evaluation ``generate`` of ``tasks.generation`` returns texts only; this module uses the same pieces
(``generation_kwargs``, left padding, ``cut_at_stop``) so an answer here is the very text ``tunelab generate``
prints for the same prompt and settings, and adds the counts and the streaming.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from tunelab.recipe import GenerateConfig
from tunelab.tasks.generation import attention_mask, cut_at_stop, generation_kwargs, pad

log = logging.getLogger("tunelab.serve")


@dataclass(frozen=True)
class Answer:
    """One generated answer: its text, the prompt's and the answer's token counts, and OpenAI's finish reason
    ('stop': it ended by itself or at a stop string; 'length': it ran into max_tokens)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Abandoned(Exception):
    """The client of a streamed answer went away: generation stops at the next token."""


@torch.inference_mode()
def generate_answers(model: nn.Module, tokenizer: Any, prompts: list[list[int]], cfg: GenerateConfig,
                     decoder_only: bool, streamer: BaseStreamer | None = None) -> list[Answer]:
    """Answers to token-id prompts, generated together in one call (left-padded for decoder-only models).

    ``completion_tokens`` counts the tokens generated before the end-of-sequence token (or the padding after a
    stop string).
    """
    kwargs = generation_kwargs(cfg, model, tokenizer)
    device = next(model.parameters()).device
    ids = pad(prompts, kwargs["pad_token_id"], left=decoder_only).to(device)
    mask = attention_mask(prompts, left=decoder_only).to(device)
    generated = model.generate(input_ids=ids, attention_mask=mask, streamer=streamer, **kwargs)
    new = generated[:, ids.shape[1]:] if decoder_only else generated[:, 1:]  # seq2seq: drop the decoder start token
    ends = set(kwargs["eos_token_id"] or []) | {kwargs["pad_token_id"]}
    answers = []
    for prompt, row in zip(prompts, new.tolist()):
        used = next((i for i, token in enumerate(row) if token in ends), len(row))
        whole = tokenizer.decode(row[:used], skip_special_tokens=True).strip()
        text = cut_at_stop(whole, cfg.stop).strip()
        ran_out = used >= cfg.max_new_tokens and text == whole
        answers.append(Answer(text, len(prompt), used, "length" if ran_out else "stop"))
    return answers


def settled(text: str, stop: list[str]) -> str:
    """The part of a growing answer that later tokens cannot change, so it can be sent now.

    Held back: a half-decoded character (shown as U+FFFD until its last byte comes), trailing whitespace (the
    final answer is stripped), the last word (a tokenizer's clean-up may join it to what follows), and any tail
    that could be the start of a stop string. Everything before a stop string that already appeared is final.
    """
    text = text.lstrip().rstrip("\ufffd")  # a trailing U+FFFD may be the first bytes of a character still to come
    cut = cut_at_stop(text, stop)
    if cut != text:
        return cut.rstrip()
    longest = max((len(s) for s in stop), default=0)
    for size in range(min(longest - 1, len(text)), 0, -1):  # the earliest tail that begins a stop string
        if any(s.startswith(text[-size:]) for s in stop):
            text = text[:-size]
            break
    end = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    return text[:end].rstrip() if end >= 0 else ""


class TextStream(BaseStreamer):
    """Receives tokens from ``model.generate`` (on the model thread) and hands the newly settled text to ``emit``;
    ``finish`` sends the rest of the final answer. The pieces concatenate to exactly ``Answer.text``."""

    def __init__(self, tokenizer: Any, stop: list[str], emit: Callable[[str], None], abandoned: threading.Event) -> None:
        self.tokenizer, self.stop, self.emit, self.abandoned = tokenizer, stop, emit, abandoned
        self.tokens: list[int] = []
        self.sent = ""
        self.prompt_seen = False  # generate first puts the prompt (or the decoder start token): not part of the answer

    def put(self, value: torch.Tensor) -> None:
        """A new token (after the prompt): send whatever text it settles."""
        if self.abandoned.is_set():
            raise Abandoned("the client closed the stream")
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        self._send(settled(self.tokenizer.decode(self.tokens, skip_special_tokens=True), self.stop))

    def end(self) -> None:
        """Generation ended; ``finish`` sends the rest once the final answer is known."""

    def finish(self, final: str) -> None:
        """Send what the final answer adds to the text already sent."""
        if not final.startswith(self.sent):  # settled() is meant to make this impossible; say so if it happens
            log.warning("streamed text %r is not the start of the final answer %r", self.sent, final)
        self._send(final)

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text
