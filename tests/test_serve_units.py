"""The server's parts without a model: streamed text that never has to be taken back (checked on random token
sequences of both real packaged tokenizers), the batcher's grouping, waiting, limits and failure isolation, and the
options' validation."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import MINILM_DIR
from tunelab.serve.batcher import Batcher, Busy, Job
from tunelab.serve.decode import Abandoned, TextStream, settled
from tunelab.serve.options import ServeOptions
from tunelab.tasks.generation import cut_at_stop


# ---- streamed text ------------------------------------------------------------------------------------------------
def test_settled_holds_back_what_later_tokens_could_change() -> None:
    assert settled("  Hello wor", []) == "Hello"  # the last word may still grow
    assert settled("Hello world ", []) == "Hello world"  # trailing whitespace may be stripped at the end
    assert settled("one two three\nEND", ["\nEND"]) == "one two three"  # a stop string ends the answer
    assert settled("one two three\nEN", ["\nEND"]) == "one two"  # maybe a stop string: held, and so is "three"
    assert settled("one two three four\n", ["\nEND"]) == "one two three"
    assert settled("nospaces", []) == ""
    assert settled("one two ' \ufffd", ["' \u00e5"]) == "one two"  # half of 'å': "' \ufffd" may yet be the stop


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from tunelab.models import model_path

    return AutoTokenizer.from_pretrained(MINILM_DIR if name == "wordpiece" else model_path("smollm2-135m-instruct"))


@pytest.mark.parametrize("name", ["byte-level-bpe", "wordpiece"])
def test_streamed_pieces_always_concatenate_to_the_final_answer(name: str) -> None:
    """Random token sequences (spaces, punctuation, newlines, split multi-byte characters, special tokens) with
    stop strings taken from their own text: the pieces sent while generating plus the rest sent at the end are
    exactly the answer ``generate_answers`` returns (stripped, cut at the first stop string)."""
    tokenizer = _tokenizer(name)
    text = "Hello, world! It's a test.\nNew line:  café ünï 日本語 — 'quoted' (x) 3.5% don't\t tab"
    vocab = tokenizer(text, add_special_tokens=False)["input_ids"] + list(tokenizer.all_special_ids)
    rng = random.Random(0)
    for case in range(150):
        tokens = [rng.choice(vocab) for _ in range(rng.randint(1, 25))]
        whole = tokenizer.decode(tokens, skip_special_tokens=True)
        stop = []
        if case % 2 and len(whole.strip()) > 3:
            start = rng.randrange(len(whole) - 2)
            stop = [whole[start:start + rng.randint(1, 3)]]
        pieces: list[str] = []
        stream = TextStream(tokenizer, stop, pieces.append, threading.Event())
        stream.put(_tensor([999]))  # the prompt
        for token in tokens:
            stream.put(_tensor([token]))
        final = cut_at_stop(whole.strip(), stop).strip()
        stream.finish(final)
        assert "".join(pieces) == final, (tokens, stop, pieces)


def test_a_stream_whose_client_left_stops_at_the_next_token() -> None:
    gone = threading.Event()
    stream = TextStream(_tokenizer("wordpiece"), [], lambda piece: None, gone)
    stream.put(_tensor([101]))
    gone.set()
    with pytest.raises(Abandoned):
        stream.put(_tensor([7592]))


def _tensor(ids: list[int]) -> Any:
    import torch

    return torch.tensor([ids])


# ---- the batcher --------------------------------------------------------------------------------------------------
class Recorder:
    """Work that records each batch (keys and items) and answers each job with its items doubled."""

    def __init__(self, delay: float = 0.0, fail_on: Any = None) -> None:
        self.batches: list[list[tuple[Any, list[Any]]]] = []
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, jobs: list[Job]) -> list[Any]:
        self.batches.append([(job.key, job.items) for job in jobs])
        time.sleep(self.delay)
        if any(self.fail_on in job.items for job in jobs):
            raise RuntimeError("model exploded")
        return [[2 * item for item in job.items] for job in jobs]


def _run_jobs(batcher: Batcher, jobs: list[Job]) -> list[Any]:
    futures = [batcher.submit(job) for job in jobs]
    return [f.exception(5) or f.result() for f in futures]


def test_jobs_of_one_key_share_a_batch_up_to_max_batch_and_other_keys_wait_their_turn() -> None:
    work = Recorder()
    batcher = Batcher(work, max_batch=4, max_wait_s=0.2, max_queue=100)
    jobs = [Job("a", [1]), Job("b", [2]), Job("a", [3, 4]), Job("a", [5]), Job("a", [6]), Job("b", [7])]
    batcher.start()
    try:
        assert _run_jobs(batcher, jobs) == [[2], [4], [6, 8], [10], [12], [14]]
        assert batcher.alive()
    finally:
        batcher.stop()
    assert not batcher.alive()
    assert [[key for key, _ in batch] for batch in work.batches] == [["a", "a", "a"], ["b", "b"], ["a"]]
    assert all(sum(len(items) for _, items in batch) <= 4 for batch in work.batches)
    assert (batcher.batches, batcher.jobs) == (3, 6)


def test_a_job_alone_waits_at_most_max_wait() -> None:
    batcher = Batcher(Recorder(), max_batch=8, max_wait_s=0.05, max_queue=10)
    batcher.start()
    try:
        began = time.monotonic()
        assert batcher.submit(Job("a", [1])).result(5) == [2]
        assert time.monotonic() - began < 2.0  # 50 ms of waiting, plus a loaded machine's scheduling
    finally:
        batcher.stop()


def test_a_failing_batch_is_retried_one_by_one_so_only_the_bad_job_fails() -> None:
    work = Recorder(fail_on="boom")
    batcher = Batcher(work, max_batch=8, max_wait_s=0.2, max_queue=10)
    batcher.start()
    try:
        results = _run_jobs(batcher, [Job("a", [1]), Job("a", ["boom"]), Job("a", [3])])
    finally:
        batcher.stop()
    assert results[0] == [2] and results[2] == [6]
    assert isinstance(results[1], RuntimeError)
    assert len(work.batches[0]) == 3 and [len(b) for b in work.batches[1:]] == [1, 1, 1]
    assert (batcher.batches, batcher.jobs) == (4, 3)  # four model calls answered three requests


def test_a_full_queue_refuses_instead_of_growing() -> None:
    release = threading.Event()
    batcher = Batcher(lambda jobs: [release.wait(5) for _ in jobs], max_batch=1, max_wait_s=0, max_queue=2)
    batcher.start()
    try:
        first = batcher.submit(Job("a", [1]))
        deadline = time.monotonic() + 5
        while batcher.waiting() and time.monotonic() < deadline:  # the model thread has taken the first job
            time.sleep(0.01)
        waiting = [batcher.submit(Job("a", [i])) for i in range(2)]
        with pytest.raises(Busy):
            batcher.submit(Job("a", [9]))
        release.set()
        assert all(f.result(5) for f in [first, *waiting])
    finally:
        release.set()
        batcher.stop()


def test_a_job_given_up_before_it_ran_is_skipped() -> None:
    work = Recorder()
    batcher = Batcher(work, max_batch=8, max_wait_s=0.2, max_queue=10)
    given_up = Job("a", [1])
    given_up.future.cancel()
    batcher.start()
    try:
        assert batcher.submit(given_up).cancelled() and batcher.submit(Job("a", [2])).result(5) == [4]
    finally:
        batcher.stop()
    assert work.batches == [[("a", [2])]]


# ---- options ------------------------------------------------------------------------------------------------------
def test_options_refuse_nonsense_and_bound_the_body() -> None:
    with pytest.raises(ValidationError, match="API key is empty"):
        ServeOptions(api_key="  ")
    for bad in ({"max_batch": 0}, {"threads": 0}, {"max_wait_ms": -1}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            ServeOptions(**bad)
    options = ServeOptions(max_inputs=2, max_input_chars=100, max_image_bytes=300)
    assert options.body_limit(images=False) == 64 * 1024 + 2 * (600 + 64)
    assert options.body_limit(images=True) == 64 * 1024 + 2 * (400 + 64)

