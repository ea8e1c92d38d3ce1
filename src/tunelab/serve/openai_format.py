"""Answers in OpenAI's response shapes (chat.completion, text_completion, their stream chunks, usage), so OpenAI's
own clients and the tools built on them read this server as they read OpenAI."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tunelab.serve.decode import Answer


def usage(answers: list[Answer]) -> dict[str, int]:
    """Token counts of a response: the prompts as the model saw them and the answers it generated."""
    prompt = sum(a.prompt_tokens for a in answers)
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line (``data: [DONE]`` ends a stream)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Response:
    """One response's identity (id, creation time, model) and its shapes; ``chat`` picks chat or text completion."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def _choice(self, index: int, text: str, finish: str | None, delta: dict[str, str] | None = None) -> dict[str, Any]:
        if not self.chat:
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        body = {"delta": delta} if delta is not None else {"message": {"role": "assistant", "content": text}}
        return {"index": index, **body, "finish_reason": finish, "logprobs": None}

    def whole(self, answers: list[Answer]) -> dict[str, Any]:
        """The complete (non-streamed) response: one choice per answer, and the usage."""
        choices = [self._choice(i, a.text, a.finish_reason) for i, a in enumerate(answers)]
        return self._head(self.object) | {"choices": choices, "usage": usage(answers)}

    def _chunk(self, text: str, finish: str | None, delta: dict[str, str]) -> dict[str, Any]:
        kind = f"{self.object}.chunk" if self.chat else self.object
        return self._head(kind) | {"choices": [self._choice(0, text, finish, delta if self.chat else None)]}

    def opening(self) -> dict[str, Any] | None:
        """The first chunk of a chat stream (the assistant role); text completions have none."""
        return self._chunk("", None, {"role": "assistant", "content": ""}) if self.chat else None

    def piece(self, text: str) -> dict[str, Any]:
        """A chunk carrying the next piece of the answer."""
        return self._chunk(text, None, {"content": text})

    def closing(self, answer: Answer) -> dict[str, Any]:
        """The last chunk with a choice: no text, the finish reason."""
        return self._chunk("", answer.finish_reason, {})

    def usage_chunk(self, answer: Answer) -> dict[str, Any]:
        """The chunk that ``stream_options.include_usage`` asks for: no choices, the usage."""
        kind = f"{self.object}.chunk" if self.chat else self.object
        return self._head(kind) | {"choices": [], "usage": usage([answer])}
