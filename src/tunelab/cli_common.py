"""What every ``tunelab`` sub-command shares: the typer app, the console, the ``--set`` option, the error boundary
(errors of ours print as one clear message and exit 2) and reading inputs from arguments or a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from tunelab.errors import TunelabError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="tunelab: fine-tune pretrained models with every strategy, and see honestly which one wins.")
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get full module names

Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set train.lr=3e-5 (repeatable).")]


def _run(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - thin error boundary
    try:
        return fn(*args, **kwargs)
    except TunelabError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def read_inputs(given: list[str] | None, file: Path | None, missing: str) -> list[str]:
    """Inputs from arguments plus the non-blank lines of --file; a missing file or no input is one clear error."""
    inputs = list(given or [])
    if file:
        if not file.is_file():
            console.print(f"[bold red]error:[/] {file}: no such file")
            raise typer.Exit(2)
        inputs += [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not inputs:
        console.print(f"[bold red]error:[/] {missing}")
        raise typer.Exit(2)
    return inputs


def listen_or_exit(host: str, port: int) -> Any:
    """A listening socket for ``tunelab serve`` and ``tunelab ui``; a taken address is a one-line error and exit 2."""
    from tunelab.serve.server import listen  # fastapi and uvicorn load only for the commands that serve

    try:
        return listen(host, port)
    except OSError as err:
        console.print(f"[bold red]error:[/] cannot listen on {host}:{port} ({err.strerror or err}); "
                      "choose another --port (0 picks a free one) or stop what holds it", highlight=False)
        raise typer.Exit(2) from None
