"""``tunelab serve`` for a text classifier, through a real uvicorn server on 127.0.0.1: answers equal the run's own
``predict``, the API key is enforced, every kind of bad request gets its 4xx in OpenAI's error shape and the server
still answers afterwards, a failure inside the model is a 500 for that request only, concurrent requests are
batched, and the command itself starts, serves and stops."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe, toy_rows
from tunelab import api
from tunelab.cli import app
from tunelab.run import Run
from tunelab.serve import ServeOptions, ServerThread, build

KEY = "test-key"
TEXTS = ["a brilliant and moving film", "dull, tedious and flat", "the plot was quite charming", "awful acting"]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Run:
    folder = tmp_path_factory.mktemp("serve-classify")
    data = folder / "reviews.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(toy_rows(60))
    return api.train(make_recipe(folder, tiny_bert_dir, data, train={"max_steps": 2}), name="sentiment")


@pytest.fixture(scope="module")
def server(classifier_run: Run) -> Iterator[ServerThread]:
    options = ServeOptions(api_key=KEY, max_batch=8, max_wait_ms=50, max_inputs=8, max_input_chars=200)
    with ServerThread(build(classifier_run, options)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        yield http


def health(client: httpx2.Client) -> dict[str, Any]:
    response = client.get("/health")
    assert response.status_code == 200
    return response.json()


def test_classify_answers_what_predict_answers(client: httpx2.Client, classifier_run: Run) -> None:
    response = client.post("/v1/classify", json={"model": "sentiment", "inputs": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    direct = classifier_run.predict(TEXTS)
    assert body["model"] == "sentiment" and [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert [d["label"] for d in body["data"]] == [p["label"] for p in direct]
    for served, local in zip(body["data"], direct):
        assert served["scores"] == pytest.approx(local["scores"], abs=1e-5)
        assert sum(served["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_health_and_models_name_the_run(server: ServerThread, client: httpx2.Client) -> None:
    assert httpx2.get(f"{server.url}/health").json()["task"] == "classification"  # probes need no key
    models = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY).models.list()
    assert [m.id for m in models.data] == ["sentiment"]
    assert client.get("/v1/models/sentiment").json()["id"] == "sentiment"


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {KEY}", "Bearer"])
def test_requests_without_the_right_key_get_401(server: ServerThread, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx2.post(f"{server.url}/v1/classify", json={"inputs": ["fine"]}, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key").models.list()


BAD = [  # (request, status, error code or param, words of the message)
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json", "not valid JSON"),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400, "invalid_value", "JSON object"),
    ({"json": {"inputs": []}}, 400, "inputs", "at least 1"),
    ({"json": {"inputs": ["fine", "  "]}}, 400, "inputs[1]", "is empty"),
    ({"json": {"inputs": ["x" * 201]}}, 400, "input_too_long", "over this server's limit of 200"),
    ({"json": {"inputs": "just one text"}}, 400, "inputs", "valid list"),
    ({"json": {"inputs": [1, 2]}}, 400, "inputs[0]", "valid string"),
    ({"json": {"inputs": ["fine"] * 9}}, 400, "inputs", "over this server's limit of 8"),
    ({"json": {"inputs": ["fine"], "temperature": 0}}, 400, "temperature", "not a parameter"),
    ({"json": {"model": "gpt-4", "inputs": ["fine"]}}, 404, "model_not_found", "serves 'sentiment'"),
    ({"json": {"inputs": ["x" * 80_000]}}, 413, "request_too_large", "over this server's limit"),
]


@pytest.mark.parametrize(("request_", "status", "what", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_4xx_in_openai_shape_and_the_server_lives(
        client: httpx2.Client, request_: dict[str, Any], status: int, what: str, words: str) -> None:
    response = client.post("/v1/classify", **request_)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert what in (error["code"], error["param"]) and words in error["message"], error
    assert health(client)["status"] == "ok"


@pytest.mark.parametrize(("method", "path", "status", "words"), [
    ("POST", "/v1/chat/completions", 400, "use POST /v1/classify"),
    ("POST", "/v1/completions", 400, "does not generate text"),
    ("GET", "/v1/classify", 405, "GET is not allowed"),
    ("POST", "/v1/embeddings", 404, "no endpoint /v1/embeddings"),
    ("GET", "/v1/models/other", 404, "serves 'sentiment'"),
])
def test_endpoints_this_run_does_not_serve_say_what_to_use(client: httpx2.Client, method: str, path: str,
                                                         status: int, words: str) -> None:
    response = client.request(method, path, json={"model": "sentiment", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == status and words in response.json()["error"]["message"], response.text
    assert health(client)["status"] == "ok"


def test_concurrent_requests_are_all_answered_in_fewer_batches(client: httpx2.Client, classifier_run: Run) -> None:
    texts = [f"{TEXTS[i % 4]} number {i}" for i in range(16)]
    before = health(client)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda text: client.post("/v1/classify", json={"inputs": [text]}), texts))
    after = health(client)
    assert [r.status_code for r in responses] == [200] * 16
    direct = classifier_run.predict(texts)
    assert [r.json()["data"][0]["label"] for r in responses] == [p["label"] for p in direct]
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16  # batched: fewer model calls than requests


def test_a_failure_inside_the_model_is_a_500_for_that_request_only(client: httpx2.Client, server: ServerThread,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No real input makes this model raise, so one is made to (the only stand-in in these tests): its own
    request gets a 500 in OpenAI's shape; requests batched with it are answered; the server serves on."""
    task = server.server.config.app.state.service.engine.task
    predict = task.predict

    def exploding(model: Any, inputs: list[Any], batch_size: int) -> list[dict[str, Any]]:
        if "boom" in inputs:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return predict(model, inputs, batch_size)

    monkeypatch.setattr(task, "predict", exploding)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda text: client.post("/v1/classify", json={"inputs": [text]}),
                                  ["fine", "good", "boom", "bad", "dull", "moving"]))
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200]
    error = responses[2].json()["error"]
    assert error["type"] == "server_error" and "RuntimeError" in error["message"] and "still up" in error["message"]
    assert client.post("/v1/classify", json={"inputs": ["fine again"]}).status_code == 200


def test_a_full_queue_is_a_503_with_retry_after_and_every_queued_request_is_answered(classifier_run: Run) -> None:
    """The model is held busy (a stand-in: its predict waits for the test) so that requests queue up."""
    app_ = build(classifier_run.dir, ServeOptions(max_batch=1, max_wait_ms=0, max_queue=1))
    task, release, entered = app_.state.service.engine.task, threading.Event(), threading.Event()
    predict = task.predict

    def held(model: Any, inputs: list[Any], batch_size: int) -> list[dict[str, Any]]:
        entered.set()
        release.wait(30)
        return predict(model, inputs, batch_size)

    task.predict = held
    with ServerThread(app_) as running, ThreadPoolExecutor(2) as pool:
        def post(text: str) -> httpx2.Response:
            return httpx2.post(f"{running.url}/v1/classify", json={"inputs": [text]}, timeout=60)

        first = pool.submit(post, "taken by the model thread")
        assert entered.wait(30)
        second = pool.submit(post, "waits in the queue")
        deadline = time.monotonic() + 30
        while httpx2.get(f"{running.url}/health").json()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post("one too many")
        release.set()
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "server_busy"
        assert first.result().status_code == 200 and second.result().status_code == 200


# ---- the command ---------------------------------------------------------------------------------------------------
def test_serve_command_refuses_bad_options_before_loading_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--max-batch", "0"])
    assert result.exit_code == 2 and "--max-batch" in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing" in result.output


@pytest.mark.slow
def test_serve_command_listens_on_loopback_answers_and_stops_on_ctrl_c(classifier_run: Run) -> None:
    env = {**os.environ, "TUNELAB_API_KEY": KEY, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", str(classifier_run), "--port", "0",
                                "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        banner = process.stdout.readline() + process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", banner)
        assert found and "POST /v1/classify" in banner and "API key required" in banner, banner
        url = found.group(1)
        assert httpx2.post(f"{url}/v1/classify", json={"inputs": ["fine"]}).status_code == 401
        answer = httpx2.post(f"{url}/v1/classify", json={"inputs": ["fine"]}, headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200 and answer.json()["data"][0]["label"] in ("pos", "neg")
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:  # PYTHONFAULTHANDLER: SIGABRT prints every thread's stack
            process.send_signal(signal.SIGABRT)
            output = process.communicate(timeout=30)[0]
            pytest.fail(f"serve did not stop within 60 s of Ctrl-C; its output and threads:\n{output[-8000:]}")
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
