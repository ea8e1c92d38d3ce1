"""``POST /v1/classify`` for text classification runs: the inputs of every request in a batch go through the
task's own ``predict`` in one call (tokenized and truncated exactly as ``tunelab predict`` does), and each request
gets its own inputs' labels and probabilities back, in order."""

from __future__ import annotations

from itertools import islice
from typing import Any

from tunelab.run import Run
from tunelab.serve.batcher import Job
from tunelab.serve.errors import ApiError, bad_request
from tunelab.serve.options import ServeOptions


class TextClassifier:
    """Serves a classification run: texts in, a label and a probability per label out."""

    endpoints = frozenset({"classify"})

    def __init__(self, run: Run, options: ServeOptions) -> None:
        self.task, self.model, self.options = run.task, run.model, options
        self.task_type = run.recipe.task.type

    def why_not(self, endpoint: str) -> str:
        """Why this run does not answer a generation endpoint, and what to call instead."""
        return f"this is a {self.task_type} run, which labels inputs and does not generate text; use POST /v1/classify"

    def accept(self, inputs: list[str]) -> list[Any]:
        """Check a request's inputs on arrival (empty or over-long texts are a 400 naming the input)."""
        for i, text in enumerate(inputs):
            if not text.strip():
                raise bad_request(f"inputs[{i}] is empty; send the text to classify", param=f"inputs[{i}]")
            if len(text) > self.options.max_input_chars:
                raise bad_request(f"inputs[{i}] is {len(text)} characters, over this server's limit of "
                                  f"{self.options.max_input_chars} (tunelab serve --max-input-chars)",
                                  param=f"inputs[{i}]", code="input_too_long")
        return inputs

    def prepare(self, items: list[Any]) -> list[Any]:
        """Turn accepted inputs into what ``predict`` takes (on the model thread; raises ApiError for a bad one)."""
        return items

    def work(self, jobs: list[Job]) -> list[Any]:
        """One ``predict`` call for the inputs of all jobs; each job gets ``[{index, label, scores}]``."""
        results: list[Any] = [None] * len(jobs)
        ready: list[tuple[int, list[Any]]] = []
        for j, job in enumerate(jobs):
            try:
                ready.append((j, self.prepare(job.items)))
            except ApiError as err:
                results[j] = err
        flat = [item for _, items in ready for item in items]
        predictions = iter(self.task.predict(self.model, flat, self.options.max_batch) if flat else [])
        for j, items in ready:
            results[j] = [{"index": i, "label": p["label"], "scores": p["scores"]}
                          for i, p in enumerate(islice(predictions, len(items)))]
        return results
