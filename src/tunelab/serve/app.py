"""The HTTP application: routes, the model thread's lifetime, and how each answer or failure reaches the client.

Endpoints: ``GET /health``, ``GET /v1/models`` (and ``/v1/models/{id}``); for generation runs
``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI's shapes, ``stream: true`` as server-sent events);
for classifier runs ``POST /v1/classify``. An endpoint the run cannot answer is a 400 that says which one to use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from tunelab.recipe import GenerateConfig
from tunelab.run import Run
from tunelab.serve.batcher import Batcher, Busy, Job
from tunelab.serve.channel import Channel
from tunelab.serve.engines import Engine
from tunelab.serve.errors import ApiError, bad_request, install, model_failed
from tunelab.serve.guard import Guard
from tunelab.serve.openai_format import Response, sse
from tunelab.serve.options import ServeOptions
from tunelab.serve.schemas import ChatRequest, ClassifyRequest, CompletionRequest, Sampling

ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "classify": "/v1/classify"}
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Service:
    """What the routes do for one run: check the request, queue its job for the model thread, shape the answer."""

    def __init__(self, run: Run, engine: Engine, options: ServeOptions) -> None:
        self.engine: Any = engine  # a Generator or a classifier: each route calls only what its endpoint needs
        self.options = options
        self.model_id, self.task_type = run.dir.name, run.recipe.task.type
        self.created = int((run.dir / "final").stat().st_mtime)
        self.batcher = Batcher(engine.work, options.max_batch, options.max_wait_ms / 1000, options.max_queue)

    # ---- information ----------------------------------------------------------------------------------------
    async def health(self) -> JSONResponse:
        """Liveness for probes and people: the model, its task, and how many batches served how many requests
        (503 if the model thread has stopped, so a supervisor restarts the server)."""
        alive = self.batcher.alive()
        return JSONResponse({"status": "ok" if alive else "model thread stopped", "model": self.model_id,
                             "task": self.task_type, "batches": self.batcher.batches, "requests": self.batcher.jobs,
                             "waiting": self.batcher.waiting()}, status_code=200 if alive else 503)

    async def models(self) -> dict[str, Any]:
        """OpenAI's model list: the one run this server serves, under its run folder's name."""
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str) -> dict[str, Any]:
        """OpenAI's model lookup."""
        self._check_model(model_id)
        return self._model_card()

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "tunelab"}

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id:
            raise ApiError(404, f"model '{name}' is not served here; this server serves '{self.model_id}' "
                           "(GET /v1/models)", param="model", code="model_not_found")

    # ---- work ---------------------------------------------------------------------------------------------------
    async def classify(self, body: ClassifyRequest) -> dict[str, Any]:
        """Labels and probabilities for each input, batched with other requests' inputs."""
        self._check_model(body.model)
        self._check_count(len(body.inputs), "inputs")
        results = await self._answer(Job("classify", self.engine.accept(body.inputs)))
        return {"object": "list", "model": self.model_id, "data": results}

    async def chat(self, body: ChatRequest) -> Any:
        """OpenAI's chat completion: the next assistant turn, whole or streamed."""
        cfg = self._settings(body)
        ask = self.engine.chat_ask(body.messages, cfg)
        return await self._generate(body, [ask], Response(self.model_id, chat=True))

    async def completions(self, body: CompletionRequest) -> Any:
        """OpenAI's text completion: an answer per prompt (one choice each), whole or streamed."""
        cfg = self._settings(body)
        prompts = body.prompts()
        if not prompts:
            raise bad_request("prompt is an empty list; send a prompt", param="prompt")
        self._check_count(len(prompts), "prompt")
        if body.stream and len(prompts) > 1:
            raise bad_request("stream: true takes one prompt; send the prompts as separate requests", param="prompt")
        params = ["prompt"] if isinstance(body.prompt, str) else [f"prompt[{i}]" for i in range(len(prompts))]
        asks = [self.engine.text_ask(p, param, cfg) for p, param in zip(prompts, params)]
        return await self._generate(body, asks, Response(self.model_id, chat=False))

    def _settings(self, body: Sampling) -> GenerateConfig:
        self._check_model(body.model)
        if body.stream_options is not None and not body.stream:
            raise bad_request("stream_options is only for stream: true", param="stream_options")
        return self.engine.settings(body)

    def _check_count(self, count: int, param: str) -> None:
        if count > self.options.max_inputs:
            raise bad_request(f"{param} holds {count} inputs, over this server's limit of {self.options.max_inputs} "
                              "per request (tunelab serve --max-inputs); split them across requests", param=param)

    async def _generate(self, body: Sampling, asks: list[Any], response: Response) -> Any:
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(asks[0], response, include_usage)
        key = asks[0].cfg.model_dump_json()  # equal settings share a batch
        return response.whole(await self._answer(Job(key, asks)))

    def _submit(self, job: Job) -> Any:
        try:
            return self.batcher.submit(job)
        except Busy as err:
            raise ApiError(503, f"the server is busy ({err}); retry in a moment", type="server_error",
                           code="server_busy", headers={"Retry-After": "1"}) from None

    async def _answer(self, job: Job) -> Any:
        """The job's result from the model thread; its failure as an API error (a 4xx it raised, else a 500)."""
        try:
            return await asyncio.wrap_future(self._submit(job))
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - the model's failure is this request's 500, not the server's end
            raise model_failed(err) from None

    async def _stream(self, ask: Any, response: Response, include_usage: bool) -> StreamingResponse:
        """Queue a streamed ask; once the model thread accepts its prompt, answer with the event stream (a prompt
        it refuses is still an ordinary 400)."""
        channel = Channel()
        job = Job(object(), [ask], stream=channel)  # a key of its own: streams are never batched
        self._submit(job).add_done_callback(channel.end_with)
        try:
            kind, value = await channel.get()
        except asyncio.CancelledError:
            channel.abandoned.set()
            raise
        if kind == "end":
            _result(value)
        return StreamingResponse(self._events(channel, response, include_usage), media_type="text/event-stream",
                                 headers=STREAM_HEADERS)

    async def _events(self, channel: Channel, response: Response, include_usage: bool) -> AsyncIterator[str]:
        """Chunks as the text settles, then the finish reason (and usage if asked), then ``[DONE]``; a failure
        midway is an ``error`` event, which OpenAI's clients raise."""
        finished = False
        try:
            opening = response.opening()
            if opening:
                yield sse(opening)
            while True:
                kind, value = await channel.get()
                if kind == "text":
                    yield sse(response.piece(value))
                    continue
                finished = True
                try:
                    (answer,) = _result(value)
                except ApiError as err:
                    yield sse(err.body())
                    return
                yield sse(response.closing(answer))
                if include_usage:
                    yield sse(response.usage_chunk(answer))
                yield sse("[DONE]")
                return
        finally:
            if not finished:  # the client went away: stop generating for it
                channel.abandoned.set()


def _result(future: Any) -> Any:
    """A finished job's result, or its failure as an ApiError."""
    try:
        return future.result()
    except ApiError:
        raise
    except Exception as err:  # noqa: BLE001
        raise model_failed(err) from None


def create_app(run: Run, engine: Engine, options: ServeOptions) -> FastAPI:
    """The ASGI app serving ``run`` through ``engine``; the model thread lives as long as the app runs."""
    service = Service(run, engine, options)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """The model thread starts with the server and ends after its last request."""
        service.batcher.start()
        yield
        service.batcher.stop()

    app = FastAPI(title=f"tunelab serve: {service.model_id}", lifespan=lifespan,
                  description=f"{service.task_type} run {run.dir}, served by tunelab.")
    app.state.service = service
    images = service.task_type == "image_classification"
    app.add_middleware(Guard, api_key=options.api_key, max_body=options.body_limit(images=images))
    install(app)
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route("/v1/models", service.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", service.model, methods=["GET"])
    handlers = {"chat": service.chat, "completions": service.completions, "classify": service.classify}
    for endpoint, path in ROUTES.items():
        if endpoint in engine.endpoints:
            app.add_api_route(path, handlers[endpoint], methods=["POST"])
        else:
            app.add_api_route(path, _refusal(engine.why_not(endpoint)), methods=["POST"], include_in_schema=False)
    return app


def _refusal(message: str) -> Any:
    async def refuse() -> None:
        """Answer an endpoint this run cannot serve with a 400 that names the one to use."""
        raise bad_request(message, code="unsupported_endpoint")

    return refuse
