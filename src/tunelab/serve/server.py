"""Running the app: load the run once, listen on a socket, serve with uvicorn, in the foreground (``tunelab
serve``) or in a background thread (tests, notebooks, the load test)."""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from tunelab.run import Run, open_run
from tunelab.serve.app import create_app
from tunelab.serve.engines import make_engine
from tunelab.serve.options import ServeOptions


def build(run: str | Path | Run, options: ServeOptions) -> FastAPI:
    """The app for a finished run, its model loaded now, so that a broken run fails before anything listens."""
    loaded = open_run(run)
    return create_app(loaded, make_engine(loaded, options), options)


def is_loopback(host: str) -> bool:
    """True when ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
    except (OSError, ValueError):
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one); raises OSError when the address is taken."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)


def address(sock: socket.socket) -> str:
    """The base URL a client uses for a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app: FastAPI, access_log: bool) -> uvicorn.Server:
    """uvicorn for our app: plain asyncio and h11 (no optional C extensions needed), our own error bodies."""
    config = uvicorn.Config(app, loop="asyncio", http="h11", lifespan="on", access_log=access_log,
                            log_level="info" if access_log else "warning", timeout_graceful_shutdown=30)
    return uvicorn.Server(config)


def serve(app: FastAPI, sock: socket.socket, access_log: bool = True) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM, then stop gracefully: requests in flight are answered,
    then the model thread ends. (uvicorn runs in a thread, so the signals stay ours: no re-raised Ctrl-C.)

    Both signals only record that a stop was asked: a KeyboardInterrupt raised between two bytecodes of
    ``Thread.is_alive`` makes Python 3.11 release the running thread's state lock and mark it stopped (bpo-45274's
    fix), after which the graceful join returns at once and the process can hang on its way out; and setting a
    ``threading.Event`` from a handler can deadlock on the lock the interrupted ``wait`` holds."""
    asked: list[int] = []

    def ask_to_stop(number: int, _frame: object) -> None:
        asked.append(number)

    handlers = {number: signal.signal(number, ask_to_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ServerThread(app, sock=sock, access_log=access_log) as running:
            while running.thread.is_alive() and not asked:
                time.sleep(0.1)
    finally:
        for number, previous in handlers.items():
            signal.signal(number, previous)


class ServerThread:
    """The app served by uvicorn in a background thread, on ``sock`` or on host:port (0: a free port); ``url`` is
    where it listens. A context manager: ready to answer on entry, shut down gracefully on exit."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None,
                 access_log: bool = False) -> None:
        self.sock = sock or listen(host, port)
        self.url = address(self.sock)
        self.server = uvicorn_server(app, access_log)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="tunelab-serve-http", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread ended while starting; see its log")
            self.thread.join(0.01)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
