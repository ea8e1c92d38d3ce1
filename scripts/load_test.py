"""A bounded load test of ``tunelab serve`` for a classifier run, on 127.0.0.1 only.

It starts the real command (``python -m tunelab serve RUN --port 0``) in its own process, sends a fixed number of
``/v1/classify`` requests from a fixed number of concurrent clients with malformed ones mixed in, stops by itself
(after the last request, or at ``--max-seconds``), then stops the server and runs the same valid inputs through
the model directly in one process: one at a time (what serving without batching does) and in batches of
``--max-batch`` (the best batching can do). It prints one JSON report: 5xx count, lost responses (no HTTP answer),
wrong statuses, latency percentiles, throughput, the server's batch count, and the machine's load average before and
after (figures from a busy machine are not figures: read them with the load).

    .venv/bin/python scripts/load_test.py                      # trains a small minilm-l6 sentiment run first
    .venv/bin/python scripts/load_test.py --run runs/sentiment-20261122-101500 --requests 500 --bad 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

HOST = "127.0.0.1"  # fixed: this script never sends traffic anywhere but this machine
KEY = "load-test-key"
POSITIVE = ["wonderful", "moving", "sharp", "funny", "gorgeous", "brilliant", "tender", "smart", "gripping"]
NEGATIVE = ["tedious", "flat", "clumsy", "dull", "messy", "hollow", "shrill", "lifeless", "predictable"]
FILLER = ["the", "film", "its", "story", "cast", "with", "a", "script", "that", "is", "and", "director", "ending",
          "performances", "often", "never", "quite", "really", "almost", "every", "scene", "feels"]


def texts(n: int, seed: int) -> list[str]:
    """Review-like snippets of 5 to 40 words, seeded: the same inputs for the server and the direct runs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 36))]
        words.insert(rng.randrange(len(words)), rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE))
        out.append(" ".join(words))
    return out


# (name, expected status, request): each malformed kind a client gets wrong in its own way
MALFORMED: list[tuple[str, int, dict[str, Any]]] = [
    ("bad-json", 400, {"content": b'{"inputs": ["unterminated', "headers": {"content-type": "application/json"}}),
    ("empty-inputs", 400, {"json": {"inputs": []}}),
    ("empty-text", 400, {"json": {"inputs": ["   "]}}),
    ("wrong-type", 400, {"json": {"inputs": "not a list"}}),
    ("over-long", 400, {"json": {"inputs": ["word " * 5000]}}),
    ("unknown-model", 404, {"json": {"model": "gpt-4o", "inputs": ["fine"]}}),
    ("unknown-parameter", 400, {"json": {"inputs": ["fine"], "temperature": 0.2}}),
    ("no-key", 401, {"json": {"inputs": ["fine"]}, "headers": {"authorization": "Bearer wrong"}}),
    ("wrong-endpoint", 400, {"json": {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
                             "path": "/v1/chat/completions"}),
    ("wrong-method", 405, {"method": "GET"}),
]


def plan(valid: list[str], bad: int, seed: int) -> list[dict[str, Any]]:
    """Every request to send, malformed ones spread among the valid ones in a seeded order."""
    items = [{"kind": "valid", "status": 200, "request": {"json": {"inputs": [text]}}, "index": i}
             for i, text in enumerate(valid)]
    items += [{"kind": name, "status": status, "request": request}
              for name, status, request in (MALFORMED[i % len(MALFORMED)] for i in range(bad))]
    random.Random(seed).shuffle(items)
    return items


async def fire(url: str, items: list[dict[str, Any]], concurrency: int, deadline: float) -> list[dict[str, Any]]:
    """Send every item from ``concurrency`` clients; a client stops taking new items once ``deadline`` passes."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results: list[dict[str, Any]] = []
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, timeout=60, limits=limits,
                                  headers={"authorization": f"Bearer {KEY}"}) as client:

        async def worker() -> None:
            while not queue.empty() and time.monotonic() < deadline:
                item = queue.get_nowait()
                request = dict(item["request"])
                method, path = request.pop("method", "POST"), request.pop("path", "/v1/classify")
                began = time.perf_counter()
                try:
                    response = await client.request(method, path, **request)
                except httpx2.HTTPError as err:  # no HTTP answer: a lost response
                    results.append(item | {"got": None, "seconds": time.perf_counter() - began, "lost": repr(err)})
                    continue
                seconds, status = time.perf_counter() - began, response.status_code
                try:
                    error = response.json().get("error", {}) if status >= 400 else {}
                except ValueError:
                    error = {}
                shaped = status < 400 or set(error) == {"message", "type", "param", "code"}
                results.append(item | {"got": status, "seconds": seconds, "error_shape": shaped})

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (NaN for no values)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def start_server(run: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    """``tunelab serve`` in its own process on a free loopback port; waits (bounded) for its banner."""
    command = [sys.executable, "-m", "tunelab", "serve", str(run), "--host", HOST, "--port", "0", "--api-key", KEY,
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-input-chars", "2000"]
    command += ["--threads", str(args.server_threads)] if args.server_threads else []
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    give_up = time.monotonic() + 300
    while time.monotonic() < give_up and process.poll() is None:
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return process, found.group(1)
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not start within 300 s; its output:\n{log.read_text(errors='replace')}")


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM, as a process manager stops it (requests in flight finish); killed if it has not ended within 60 s.

    Not SIGINT: a shell starts background jobs with SIGINT ignored, and the children inherit that, so a load test
    started with ``&`` would wait the full 60 s and report the kill.
    """
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def make_run(work: Path) -> Path:
    """A small real run: the packaged minilm-l6 on Rotten Tomatoes, a few steps (the model is what is served)."""
    from tunelab import api

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "sentiment.yaml"
    run = api.train(recipe, name="load-test", overwrite=True, overrides=[
        f"output.dir={work}", "train.max_steps=4", "train.eval_every=1000", "eval.before=false",
        "eval.max_examples=32", "data.limit=512"])
    return Path(run)


def direct(run: Path, inputs: list[str], batch: int, threads: int | None) -> dict[str, float]:
    """The same inputs through the model in this process (with the server's thread count): one at a time, then
    ``batch`` at a time."""
    import torch

    from tunelab import api

    if threads:
        torch.set_num_threads(threads)
    task = api.load(run)
    task.predict(task.model, inputs[:batch], batch)  # warm up
    began = time.perf_counter()
    for text in inputs:
        task.predict(task.model, [text], 1)
    alone = time.perf_counter() - began
    began = time.perf_counter()
    task.predict(task.model, inputs, batch)
    batched = time.perf_counter() - began
    return {"one_at_a_time_inputs_per_s": len(inputs) / alone, f"batches_of_{batch}_inputs_per_s": len(inputs) / batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="A classifier run folder (default: train a small minilm-l6 run).")
    parser.add_argument("--requests", type=int, default=500, help="Requests in all, malformed ones included.")
    parser.add_argument("--bad", type=int, default=100, help="How many of them are malformed.")
    parser.add_argument("--concurrency", type=int, default=16, help="Clients sending at once.")
    parser.add_argument("--max-batch", type=int, default=16, help="The server's --max-batch.")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="The server's --max-wait-ms.")
    parser.add_argument("--server-threads", type=int, help="The server's --threads (default: torch's choice).")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="Stop sending after this long, whatever is left.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the report here (JSON).")
    args = parser.parse_args()
    if not 0 <= args.bad <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("need 0 <= --bad <= --requests <= 100000 and 1 <= --concurrency <= 256")

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tunelab-load-"))
    run = args.run or make_run(work)
    valid = texts(args.requests - args.bad, args.seed)
    items = plan(valid, args.bad, args.seed)
    process, url = start_server(run, args, work / "server.log")
    try:
        warm = [{"kind": "valid", "status": 200, "request": {"json": {"inputs": valid[:1]}}}] * 4
        asyncio.run(fire(url, warm, 4, time.monotonic() + 60))  # warm up: the first calls are slower
        before = httpx2.get(f"{url}/health").json()
        began = time.perf_counter()
        results = asyncio.run(fire(url, items, args.concurrency, time.monotonic() + args.max_seconds))
        wall = time.perf_counter() - began
        after = httpx2.get(f"{url}/health").json()
    finally:
        exit_code = stop_server(process)
    direct_rates = direct(Path(run), valid, args.max_batch, args.server_threads)
    load_after = os.getloadavg()

    answered = [r for r in results if r["got"] is not None]
    ok = [r["seconds"] for r in answered if r["kind"] == "valid" and r["got"] == 200]
    served = (after["requests"] - before["requests"], after["batches"] - before["batches"])
    report = {
        "run": str(run), "url": url, "requests_planned": len(items), "requests_sent": len(results),
        "concurrency": args.concurrency, "malformed": args.bad, "server_max_batch": args.max_batch,
        "server_max_wait_ms": args.max_wait_ms, "server_threads": args.server_threads,
        "5xx": sum(1 for r in answered if r["got"] >= 500),
        "lost_responses": sum(1 for r in results if r["got"] is None),
        "wrong_status": sum(1 for r in answered if r["got"] != r["status"]),
        "errors_not_in_openai_shape": sum(1 for r in answered if not r["error_shape"]),
        "valid_ok": len(ok),
        "malformed_refused_as_expected": sum(1 for r in answered if r["kind"] != "valid" and r["got"] == r["status"]),
        "latency_valid_ms": {"p50": 1000 * percentile(ok, 0.5), "p95": 1000 * percentile(ok, 0.95),
                             "max": 1000 * max(ok, default=float("nan")),
                             "mean": 1000 * statistics.fmean(ok) if ok else None},
        "wall_seconds": wall, "requests_per_s": len(results) / wall, "valid_inputs_per_s": len(ok) / wall,
        "server_model_calls": served[1], "server_requests_through_model": served[0],
        "mean_requests_per_model_call": served[0] / served[1] if served[1] else None,
        "direct_in_one_process": direct_rates, "server_exit_code": exit_code,
        "loadavg_before": load_before, "loadavg_after": load_after, "cpus": os.cpu_count(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if report["5xx"] or report["lost_responses"] or report["wrong_status"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
