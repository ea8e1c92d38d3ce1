"""``tunelab serve``: a finished run behind an HTTP API that OpenAI's clients speak.

Generation runs (causal_lm, seq2seq) answer ``/v1/chat/completions`` and ``/v1/completions``; classifier runs
(classification, image_classification) answer ``/v1/classify``; every run answers ``/health`` and ``/v1/models``.
Concurrent requests are gathered into batches for one model thread (``batcher``).

Why FastAPI on uvicorn: request bodies are pydantic models, as our recipes are, so a wrong type or a missing field
is refused with the parameter's name before any work, and the API describes itself at ``/docs``; Starlette under it
gives server-sent events (streaming) and plain ASGI middleware (the key and body-size checks); uvicorn runs it with
pure-Python h11 and asyncio, so nothing needs a compiler or a C extension. All of it installs from PyPI with few
dependencies (fastapi, starlette, uvicorn, and opentelemetry-api, which fastapi requires). The alternatives weighed:
aiohttp (a second HTTP stack beside httpx2, validation by hand), Flask (WSGI: a worker thread held per open stream),
and plain Starlette (the same core, with validation and the API description by hand).

Python use::

    from tunelab.serve import ServeOptions, ServerThread, build
    with ServerThread(build("runs/sentiment", ServeOptions(max_batch=32))) as server:
        print(server.url)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeOptions", "ServerThread", "build", "serve"]


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: ``tunelab --help`` and ``tunelab.serve.options`` stay free of
    torch, FastAPI and uvicorn."""
    if name == "ServeOptions":
        from tunelab.serve.options import ServeOptions

        return ServeOptions
    if name in ("ServerThread", "build", "serve"):
        from tunelab.serve import server

        return getattr(server, name)
    raise AttributeError(name)
