"""The door of the server, before any routing or JSON parsing: the API key, and a bounded request body.

Checked first so that a client without the key learns only that (401), whatever it sent, and so that no body over
the limit is ever held in memory (413). Written as plain ASGI rather than Starlette's ``BaseHTTPMiddleware``,
which would buffer streamed responses.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.serve.errors import ApiError

OPEN_PATHS = ("/health", "/docs", "/openapi.json")  # probes and the API description need no key


class Guard:
    """ASGI middleware: ``Authorization: Bearer KEY`` on every path but ``OPEN_PATHS`` (when a key is set), and
    request bodies of at most ``max_body`` bytes, read whole before the app sees them."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int) -> None:
        self.app, self.max_body = app, max_body
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorized(headers.get(b"authorization", b"")):
            error = ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>' with the key "
                             "the server was started with (--api-key or TUNELAB_API_KEY)", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
            await error.response()(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key or b"")

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(413, f"the request body is over this server's limit of {self.max_body:,} bytes; send fewer "
                         "or smaller inputs (or start the server with higher --max-inputs/--max-input-chars/"
                         "--max-image-bytes)", code="request_too_large", headers={"Connection": "close"})
        await error.response()(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then waits on the client (for its disconnect)."""
    given = False

    async def replayed() -> dict[str, Any]:
        """The body once, then whatever the client sends next."""
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
