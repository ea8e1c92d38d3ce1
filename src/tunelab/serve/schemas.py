"""Request bodies, checked by pydantic before any work: OpenAI's chat and completion parameters (the subset this
server honours; any other parameter is refused by name rather than silently ignored) and ``/v1/classify``.

Types are strict: ``"max_tokens": "10"`` or ``"stream": "yes"`` is a 400, not a guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Stop = str | list[str]


class Strict(BaseModel):
    """Unknown parameters are refused by name, and no value is coerced from another type."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    """One part of a message's content in OpenAI's list form; only text parts exist for these models."""

    type: Literal["text"]
    text: str


class Message(Strict):
    """One chat turn. 'developer' is OpenAI's newer name for the system role and is read as 'system'."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(Strict):
    """``include_usage``: end the stream with a chunk that carries the token counts, as OpenAI does."""

    include_usage: bool = False


class Sampling(Strict):
    """What chat and completion requests share: the model and how to generate."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="0 decodes greedily; above 0 samples.")
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Stop | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # OpenAI's end-user tag: accepted, not used

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported; send n separate requests (with temperature > 0 to get "
                             "different answers)")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Stop | None) -> Stop | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("give at most 4 stop strings, each 1 to 64 characters")
        return stop

    @model_validator(mode="after")
    def _one_length(self) -> Sampling:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; give one of them")
        return self

    def new_tokens(self) -> int | None:
        """max_completion_tokens (OpenAI's newer name) or max_tokens, if the request gives either."""
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``: the conversation so far; the answer is the next assistant turn."""

    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    """``POST /v1/completions``: prompts asked as ``tunelab generate`` asks them (the recipe's template)."""

    prompt: str | list[str] = Field(description="One prompt, or a list of prompts answered together (one choice each).")

    def prompts(self) -> list[str]:
        """The prompt(s) as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ClassifyRequest(Strict):
    """Inputs to classify: texts for a text run; base64 image bytes or ``data:image/...;base64,`` URLs for an image run."""

    model: str | None = None
    inputs: list[str] = Field(min_length=1)
