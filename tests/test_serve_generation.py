"""``tunelab serve`` for generation runs, spoken to with the real ``openai`` client over a real uvicorn server on
127.0.0.1: chat and completions answer exactly what the run's own ``chat``/``generate`` answer, a streamed answer
concatenates to the non-streamed one, request parameters override the recipe's, bad requests get their 4xx, and
concurrent requests are batched. A tiny config-built Llama (with the real SmolLM2 tokenizer and chat template) and
a tiny T5 keep it fast; barely trained, they still write several words per answer."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import torch

from tests.conftest import MINILM_DIR
from tunelab import api
from tunelab.recipe import parse_recipe
from tunelab.run import Run
from tunelab.serve import ServeOptions, ServerThread, build

KEY = "gen-key"
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish"]
ASK = [{"role": "user", "content": "red blue cat"}]


def train_tiny(folder: Path, model: Path, task: dict[str, Any], columns: tuple[str, str]) -> Run:
    """A run of a tiny model after one tiny step: still close to random, so it writes several words."""
    rng = random.Random(0)
    rows = [dict(zip(columns, [" ".join(rng.sample(WORDS, 3))] * 2)) for _ in range(30)]
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = parse_recipe({
        "name": "gen", "model": {"name": str(model)}, "task": {"max_length": 64, **task},
        "data": {"train": str(data), "split": {"validation": 0.2, "test": 0.2}},
        "train": {"lr": 1e-6, "max_steps": 1, "batch_size": 8, "warmup_ratio": 0.0},
        "eval": {"before": False, "batch_size": 8, "max_examples": 2},
        "generate": {"max_new_tokens": 12, "samples": 1}, "output": {"dir": str(folder / "runs")}})
    return api.train(recipe, name=task["type"].replace("_", "-"))


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.models import model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve-llama")
    tokenizer = AutoTokenizer.from_pretrained(model_path("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return train_tiny(folder, folder / "model", {"type": "causal_lm"}, ("prompt", "completion"))


@pytest.fixture(scope="module")
def server(llama_run: Run) -> Iterator[ServerThread]:
    options = ServeOptions(api_key=KEY, max_batch=16, max_wait_ms=50, max_tokens=64, max_input_chars=4000, max_inputs=4)
    with ServerThread(build(llama_run.dir, options)) as running:  # its own copy of the model, as the command has
        yield running


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def batches(server: ServerThread) -> tuple[int, int]:
    body = httpx2.get(f"{server.url}/health").json()
    return body["batches"], body["requests"]


def test_chat_answers_what_the_runs_own_chat_answers(client: openai.OpenAI, llama_run: Run) -> None:
    assert [m.id for m in client.models.list().data] == ["causal-lm"]
    reply = client.chat.completions.create(model="causal-lm", messages=ASK)
    expected = llama_run.task.chat(llama_run.model, ASK)
    assert reply.choices[0].message.content == expected and len(expected.split()) >= 3
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    prompt_tokens = len(llama_run.task.prompt_ids(ASK))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.usage.completion_tokens <= 12 and reply.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_chat_concatenates_to_the_same_answer(client: openai.OpenAI, server: ServerThread) -> None:
    whole = client.chat.completions.create(model="causal-lm", messages=ASK)
    chunks = list(client.chat.completions.create(model="causal-lm", messages=ASK, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content and len(pieces) >= 2  # streamed, not sent whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    raw = httpx2.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "causal-lm", "messages": ASK, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n") and raw.text.startswith("data: {")


def test_completions_answer_what_generate_answers_one_choice_per_prompt(client: openai.OpenAI, llama_run: Run) -> None:
    prompts = ["red blue", "my laptop will not boot after the update"]
    answer = client.completions.create(model="causal-lm", prompt=prompts)
    assert [c.text for c in answer.choices] == llama_run.task.generate(llama_run.model, prompts)
    assert [c.index for c in answer.choices] == [0, 1] and answer.object == "text_completion"
    single = client.completions.create(model="causal-lm", prompt=prompts[0])
    assert single.choices[0].text == answer.choices[0].text
    streamed = list(client.completions.create(model="causal-lm", prompt=prompts[0], stream=True))
    assert "".join(c.choices[0].text for c in streamed) == single.choices[0].text


def test_request_parameters_go_over_the_recipes_settings(client: openai.OpenAI, llama_run: Run) -> None:
    short = client.chat.completions.create(model="causal-lm", messages=ASK, max_tokens=2)
    assert (short.choices[0].finish_reason, short.usage.completion_tokens) == ("length", 2)
    full = llama_run.task.chat(llama_run.model, ASK)
    stop = full.split()[2]
    cut = client.chat.completions.create(model="causal-lm", messages=ASK, stop=[stop])
    assert cut.choices[0].message.content == full[: full.find(stop)].strip() and cut.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(model="causal-lm", messages=ASK, temperature=1.5, top_p=0.9)
    assert sampled.choices[0].message.content is not None


BAD = [  # (request body over a valid chat, status, error code or param, words of the message)
    ({"n": 2}, 400, "n", "only n=1"),
    ({"temperature": "hot"}, 400, "temperature", "valid number"),
    ({"max_tokens": 10_000}, 400, "max_tokens", "limit of 64"),
    ({"max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ({"messages": []}, 400, "messages", "at least 1"),
    ({"messages": [{"role": "user", "content": " "}]}, 400, "messages[0].content", "is empty"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "'user'"),
    ({"messages": [{"role": "user", "content": "x " * 2100}]}, 400, "input_too_long", "limit of 4000"),
    ({"messages": [{"role": "user", "content": "stone " * 300}]}, 400, "context_length_exceeded", "context of 256"),
    ({"logprobs": True}, 400, "logprobs", "not a parameter"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options", "only for stream"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ({"model": "gpt-4o"}, 404, "model_not_found", "serves 'causal-lm'"),
    ({"stream": "yes"}, 400, "stream", "valid boolean"),
]


@pytest.mark.parametrize(("change", "status", "what", "words"), BAD, ids=[f"{next(iter(b[0]))}-{i}" for i, b in enumerate(BAD)])
def test_bad_chat_requests_get_a_4xx_and_the_server_lives(server: ServerThread, change: dict[str, Any], status: int,
                                                          what: str, words: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx2.post(f"{server.url}/v1/chat/completions", json={"model": "causal-lm", "messages": ASK} | change,
                           headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert what in (error["code"], error["param"]) and words in error["message"], error
    assert httpx2.get(f"{server.url}/health").json()["status"] == "ok"


def test_other_bad_requests(client: openai.OpenAI, server: ServerThread) -> None:
    refused = httpx2.post(f"{server.url}/v1/classify", json={"inputs": ["x"]}, headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 400 and "use POST /v1/chat/completions" in refused.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="one prompt"):
        client.completions.create(model="causal-lm", prompt=["a", "b"], stream=True)
    with pytest.raises(openai.BadRequestError, match=r"prompt\[1\] is empty"):
        client.completions.create(model="causal-lm", prompt=["a", ""])
    with pytest.raises(openai.BadRequestError, match="limit of 4 per request"):
        client.completions.create(model="causal-lm", prompt=["a"] * 5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).completions.create(
            model="causal-lm", prompt="a")


def test_concurrent_chats_are_batched_and_each_gets_its_own_answer(client: openai.OpenAI, llama_run: Run,
                                                                   server: ServerThread) -> None:
    chats = [[{"role": "user", "content": " ".join(random.Random(i).sample(WORDS, 3))}] for i in range(16)]
    before = batches(server)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda chat: client.chat.completions.create(model="causal-lm", messages=chat), chats))
    after = batches(server)
    # greedy decoding, left-padded in a batch, answers what each prompt gets alone
    assert [r.choices[0].message.content for r in replies] == [llama_run.task.chat(llama_run.model, c) for c in chats]
    assert after[1] - before[1] == 16 and after[0] - before[0] < 16


def test_a_stream_whose_client_leaves_early_does_not_hurt_the_server(server: ServerThread, client: openai.OpenAI) -> None:
    with httpx2.stream("POST", f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "causal-lm", "messages": ASK, "stream": True, "max_tokens": 64}) as stream:
        first = next(stream.iter_lines())
        assert first.startswith("data: ")
    assert client.chat.completions.create(model="causal-lm", messages=ASK, max_tokens=3).choices[0].message.content


def test_a_model_failure_is_a_500_or_an_error_event_and_the_server_serves_on(
        server: ServerThread, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real prompt makes this model raise, so its generate is made to (a stand-in for a device error): a whole
    answer is a 500 in OpenAI's shape; a stream already under way ends with an error event, which the client raises."""
    model = server.server.config.app.state.service.engine.model

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(openai.InternalServerError, match="CUDA out of memory"):
        client.chat.completions.create(model="causal-lm", messages=ASK)
    with pytest.raises(openai.APIError, match="CUDA out of memory"):
        list(client.chat.completions.create(model="causal-lm", messages=ASK, stream=True))
    monkeypatch.undo()
    assert client.chat.completions.create(model="causal-lm", messages=ASK, max_tokens=2).usage.completion_tokens == 2


# ---- seq2seq ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve-t5")
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return train_tiny(folder, folder / "model", {"type": "seq2seq", "prompt_template": "repeat: {source}"},
                      ("source", "target"))


def test_a_seq2seq_run_completes_and_takes_single_turn_chats(t5_run: Run) -> None:
    with ServerThread(build(t5_run.dir, ServeOptions())) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="-", max_retries=0)
        sources = ["red cat sun", "blue dog"]
        answer = client.completions.create(model="seq2seq", prompt=sources)
        expected = t5_run.task.generate(t5_run.model, sources)
        assert [c.text for c in answer.choices] == expected and any(expected)
        assert answer.usage.prompt_tokens == sum(len(t5_run.task.tokenizer(f"repeat: {s}")["input_ids"]) for s in sources)
        chat = client.chat.completions.create(model="seq2seq", messages=[{"role": "user", "content": sources[0]}])
        assert chat.choices[0].message.content == expected[0]
        streamed = list(client.completions.create(model="seq2seq", prompt=sources[0], stream=True))
        assert "".join(c.choices[0].text for c in streamed) == expected[0]
        with pytest.raises(openai.BadRequestError, match="one source text at a time"):
            client.chat.completions.create(model="seq2seq", messages=[{"role": "system", "content": "be brief"}, *ASK])
