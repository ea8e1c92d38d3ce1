"""The ``tunelab ui`` command: the local web app over an output folder (see tunelab.ui for why this stack)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli_common import app, console, listen_or_exit


@app.command("ui")
def ui(
    out: Annotated[Path, typer.Option("--dir", help="The output folder: runs are started in it and found in it.")] = Path("runs"),
    recipes: Annotated[Path, typer.Option(help="Folder of recipe files the page offers (any path can be typed too).")] = Path("recipes"),
    host: Annotated[str, typer.Option(help="Address to listen on. The default answers only this machine; the app "
                                           "starts processes and reads files, so expose it to no one else.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)] = 7860,
) -> None:
    """A local web app: start runs from a recipe or a form, watch them live, stop and resume them, queue several,
    compare strategies, open reports. Works offline; runs go on when the browser or the app closes.

    Examples:

        tunelab ui                          # then open http://127.0.0.1:7860

        tunelab ui --dir runs --port 9000
    """
    # imported here, not at the top: the other commands never pay for FastAPI and uvicorn
    from tunelab.serve.server import address, is_loopback, serve
    from tunelab.ui.app import LOCAL_NAMES, create_app
    from tunelab.ui.workbench import Workbench

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background by a shell: the runs started
        signal.signal(signal.SIGINT, signal.default_int_handler)  # here must still stop on SIGINT (Stop button)
    loopback = is_loopback(host)
    if not loopback:
        console.print(f"[bold yellow]warning:[/] --host {host} lets other machines start processes and read the "
                      "output folder through this app; it has no login", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    bench = Workbench(out, recipes if recipes.is_dir() else None, shown=str(out))
    web = create_app(bench, hosts=LOCAL_NAMES | {host} if loopback else None)
    sock = listen_or_exit(host, port)
    console.print(f"tunelab ui: {address(sock)}  (output folder {out.absolute()}; Ctrl-C stops the app, not the runs)",
                  highlight=False, markup=False)
    serve(web, sock, access_log=False)  # the HTTP plumbing of tunelab serve; no access log: the page polls each second
