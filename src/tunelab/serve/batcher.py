"""One model thread fed by a small queue: concurrent requests become batches, and the model is only ever called
from that thread (neither a model nor a fast tokenizer may be used by two threads at once).

The thread takes the oldest waiting request, then gathers more with the same batch key (same task, same generation
settings) until the batch holds ``max_batch`` inputs or ``max_wait`` has passed, and makes one call for them all.
Requests with another key wait, in order, for the next batch. A request's answer comes back on its own future.

Why a thread and not the event loop: a model call holds the CPU for milliseconds to seconds; in a thread the event
loop keeps accepting, validating and refusing requests meanwhile (torch releases the GIL inside its kernels).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tunelab.serve")

_STOP = object()  # put on the queue by ``stop``: the thread ends after serving what came before it


class Busy(Exception):
    """More requests wait than the queue holds: the caller answers 503 and the client retries later."""


@dataclass(eq=False)
class Job:
    """One request's work: ``items`` (texts, images, prompts) that may share a model call with other jobs of the
    same ``key``; ``stream`` carries a streamed answer's pieces; the result or the exception lands on ``future``."""

    key: Hashable
    items: list[Any]
    stream: Any = None
    future: Future = field(default_factory=Future)


# Does the work for jobs of one key in one go; returns one result per job, or an exception instance for a job that
# failed on its own (a bad input), which is raised to that job's caller only.
Work = Callable[[list[Job]], list[Any]]


class Batcher:
    """Feeds the model thread: ``submit`` from any thread, results on each job's future."""

    def __init__(self, work: Work, max_batch: int, max_wait_s: float, max_queue: int) -> None:
        self.work, self.max_batch, self.max_wait_s, self.max_queue = work, max_batch, max_wait_s, max_queue
        self._queue: queue.Queue[Any] = queue.Queue()
        self._held: deque[Any] = deque()  # gathered jobs of another key: served first, in arrival order
        self._thread = threading.Thread(target=self._loop, name="tunelab-serve-model", daemon=True)
        self.batches = 0  # model calls made
        self.jobs = 0  # requests answered through them

    def start(self) -> None:
        """Start the model thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the model thread finish what was submitted, then end it."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def submit(self, job: Job) -> Future:
        """Queue a job for the model thread; raises ``Busy`` when ``max_queue`` jobs already wait."""
        if self._queue.qsize() + len(self._held) >= self.max_queue:
            raise Busy(f"{self.max_queue} requests are already waiting for the model")
        self._queue.put(job)
        return job.future

    def alive(self) -> bool:
        """Whether the model thread is running (a health probe's answer)."""
        return self._thread.is_alive()

    def waiting(self) -> int:
        """Jobs submitted and not yet taken into a batch."""
        return self._queue.qsize() + len(self._held)

    # ---- the model thread -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._held.popleft() if self._held else self._queue.get()
            if first is _STOP:
                return
            self._serve(self._gather(first))

    def _gather(self, first: Job) -> list[Job]:
        """``first`` and the jobs of its key that arrive within ``max_wait`` (or already wait), up to ``max_batch``
        inputs; jobs of other keys are held for later batches."""
        batch, size = [first], len(first.items)
        for job in list(self._held):
            if job is not _STOP and job.key == first.key and size + len(job.items) <= self.max_batch:
                self._held.remove(job)
                batch.append(job)
                size += len(job.items)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is not _STOP and job.key == first.key and size + len(job.items) <= self.max_batch:
                batch.append(job)
                size += len(job.items)
            else:
                self._held.append(job)
                if job is _STOP:
                    break
        return batch

    def _serve(self, batch: list[Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # the rest were given up on
        if live:
            self._call(live)

    def _call(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.jobs += len(jobs)
        try:
            results = self.work(jobs)
        except Exception as err:  # noqa: BLE001 - whatever the model raised is answered, not fatal
            if len(jobs) == 1:
                log.error("the model failed on a request", exc_info=err)
                jobs[0].future.set_exception(err)
                return
            log.warning("a batch of %d failed (%s: %s); serving its requests one by one", len(jobs), type(err).__name__, err)
            self.jobs -= len(jobs)
            for job in jobs:  # one request's bad input must not fail the others batched with it
                self._call([job])
            return
        for job, result in zip(jobs, results):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
