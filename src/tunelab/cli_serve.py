"""The ``tunelab serve`` command: load a run, listen (on the loopback address unless told otherwise), serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from tunelab.cli_common import _run, app, console, listen_or_exit
from tunelab.errors import RecipeError
from tunelab.serve.options import ServeOptions


def options(**given: object) -> ServeOptions:
    """The command's options, validated; a bad value is one error naming the option."""
    try:
        return ServeOptions(**given)
    except ValidationError as err:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise RecipeError(f"bad serve option: {problems}") from None


@app.command("serve")
def serve(
    run: Annotated[Path, typer.Argument(help="A finished classification, image_classification, causal_lm or seq2seq run.")],
    host: Annotated[str, typer.Option(help="Address to listen on. The default answers only this machine; another "
                                           "address exposes the model to the network (set an API key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="TUNELAB_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' on /v1/ endpoints (default: $TUNELAB_API_KEY, else no key).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most inputs the model takes in one call.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="Longest a request waits for others to share its batch.")] = 10.0,
    max_input_chars: Annotated[int, typer.Option(help="Longest text input: a prompt, a chat, a text to classify.")] = 20_000,
    max_inputs: Annotated[int, typer.Option(help="Most inputs (texts, images, prompts) in one request.")] = 32,
    max_image_bytes: Annotated[int, typer.Option(help="Largest image, in bytes, for image runs.")] = 4 * 2**20,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens a generation request may ask for.")] = 1024,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting for the model; more get 503.")] = 256,
    device: Annotated[str, typer.Option(help="auto (a GPU when present), cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(
        show_default=False, help="CPU threads for the model (default: torch's, one per core). On a machine shared "
                                 "with other work, fewer threads than cores can be much faster.")] = None,
) -> None:
    """Serve a run's model over HTTP until Ctrl-C: OpenAI-compatible chat and completions for generation runs,
    /v1/classify for classifiers, /health for probes. Concurrent requests are batched.

    Examples:

        tunelab serve runs/support                # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")

        TUNELAB_API_KEY=s3cret tunelab serve runs/sentiment --port 9000 --max-batch 64

        curl -s localhost:8000/v1/classify -H 'content-type: application/json' -d '{"inputs": ["a tedious mess"]}'
    """
    # imported here, not at the top: the other commands never pay for FastAPI and uvicorn
    from transformers.utils import logging as transformers_logging

    from tunelab.serve.app import ROUTES
    from tunelab.serve.server import address, build, is_loopback, serve as serve_app

    chosen = _run(options, api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms, max_input_chars=max_input_chars,
                  max_inputs=max_inputs, max_image_bytes=max_image_bytes, max_tokens=max_tokens, max_queue=max_queue,
                  device=device, threads=threads)
    if not is_loopback(host):
        console.print(f"[bold yellow]warning:[/] --host {host} lets other machines reach this server"
                      + ("" if chosen.api_key else " and no API key is set: anyone who can reach it can use the model"),
                      highlight=False)
    transformers_logging.disable_progress_bar()  # as tunelab predict/generate: no weight-loading bars in the log
    transformers_logging.set_verbosity_error()
    web = _run(build, run, chosen)
    sock = listen_or_exit(host, port)
    service = web.state.service
    paths = ", ".join(f"POST {ROUTES[e]}" for e in ROUTES if e in service.engine.endpoints)
    console.print(f"serving {run} ({service.task_type}) as model '{service.model_id}' at {address(sock)}/v1\n"
                  f"  {paths}; GET /v1/models, /health, /docs" + ("; API key required" if chosen.api_key else "")
                  + "\n  Ctrl-C stops", highlight=False, markup=False)
    serve_app(web, sock)
    console.print("stopped")
