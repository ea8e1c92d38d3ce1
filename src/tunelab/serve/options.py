"""The server's limits and knobs, validated once: what ``tunelab serve`` options and ``create_app`` callers give."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIB = 2**20


class ServeOptions(BaseModel):
    """How a run is served: the key clients must send, how requests are batched, and how large a request may be.

    Every limit is there so that one request cannot take the server down or starve the others: a bounded body,
    bounded inputs, a bounded number of new tokens, and a bounded queue (503 past it, not unbounded memory).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: str | None = Field(None, description="Clients must send 'Authorization: Bearer KEY' (none: no key).")
    max_batch: int = Field(16, ge=1, le=4096, description="Most inputs one model call takes.")
    max_wait_ms: float = Field(10.0, ge=0, le=60_000, description="Longest a request waits for others to batch with.")
    max_input_chars: int = Field(20_000, ge=1, description="Longest text input (a prompt, a chat, a text to classify).")
    max_inputs: int = Field(32, ge=1, le=4096, description="Most inputs (texts, images, prompts) in one request.")
    max_image_bytes: int = Field(4 * MIB, ge=1, description="Largest image (decoded from base64) for image runs.")
    max_tokens: int = Field(1024, ge=1, description="Most new tokens one generation request may ask for.")
    max_queue: int = Field(256, ge=1, description="Most requests waiting for the model; more are answered 503.")
    device: str = Field("auto", description="Where the model runs: auto (cuda when present), cpu, cuda, cuda:1, ...")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads torch gives the model (default: "
                                "torch's, one per core); fewer leave cores to the HTTP side and to other work.")

    @field_validator("api_key")
    @classmethod
    def _not_blank(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError("the API key is empty; give a real key, or none to serve without one")
        return key

    def body_limit(self, images: bool) -> int:
        """Largest request body in bytes: room for ``max_inputs`` inputs of the largest size (JSON-escaped text
        can take 6 bytes a character; base64 takes 4 bytes per 3), plus 64 KiB for everything else."""
        per_input = (self.max_image_bytes + 2) // 3 * 4 + 64 if images else 6 * self.max_input_chars + 64
        return 64 * 1024 + self.max_inputs * per_input
