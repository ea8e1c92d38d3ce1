"""A streamed answer's way from the model thread to the request's event loop: 'start' once the prompt is
accepted, 'text' pieces as they settle, and 'end' with the finished future (the answer, or why it failed)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any


class Channel:
    """Messages ``(kind, value)`` in order, put from any thread and read on the event loop that made the channel.

    ``abandoned`` is set by the reader when its client goes away; the generating side stops at the next token.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.abandoned = threading.Event()

    def put(self, kind: str, value: Any = None) -> None:
        """Hand a message to the reader (safe from the model thread)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop has closed: the server is shutting down, nobody is reading
            self.abandoned.set()

    def end_with(self, future: Future) -> None:
        """Put 'end' with the job's future when it finishes (``Future.add_done_callback``)."""
        self.put("end", future)

    async def get(self) -> tuple[str, Any]:
        """The next message."""
        return await self._queue.get()
