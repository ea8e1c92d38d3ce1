"""The web app's routes: the page and its static files, JSON endpoints the page polls, and the output folder's files.

Two guards, because a page on any web site can make the browser send requests to 127.0.0.1: the Host header must
name this machine (a DNS-rebinding site's name is refused), and a request that changes something must carry JSON
and, when the browser says where it comes from (Origin), come from this app. The file route serves only files inside
the output folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from tunelab.errors import TunelabError
from tunelab.ui import comparisons, form
from tunelab.ui.folder import inside
from tunelab.ui.workbench import Workbench

STATIC = Path(__file__).parent / "static"
LOCAL_NAMES = {"127.0.0.1", "localhost", "[::1]"}


class RunRequest(BaseModel):
    base: str = ""
    values: dict[str, str] = Field(default_factory=dict)
    name: str = ""
    queue: bool = False


class CompareRequest(BaseModel):
    recipe: str
    strategies: list[str]
    budget: str = ""
    seeds: str = ""
    name: str = ""


def create_app(bench: Workbench, hosts: set[str] | None = LOCAL_NAMES, scheduler: bool = True) -> FastAPI:
    """The app over a workbench. ``hosts``: the names the Host header may carry (None: any, for an app bound to a
    public address on purpose); ``scheduler``: run the queue while the app is up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if scheduler:
            bench.start_scheduler()
        yield
        bench.stop_scheduler()

    app = FastAPI(title="tunelab ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.bench = bench

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = request.headers.get("host", "")
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        if hosts is not None and name not in hosts:
            return JSONResponse({"error": f"host '{host}' refused: open the app at http://127.0.0.1"}, status_code=403)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and origin.split("//", 1)[-1] != host:
                return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
            if not request.headers.get("content-type", "").startswith("application/json"):
                return JSONResponse({"error": "send JSON (content-type: application/json)"}, status_code=415)
        return await call_next(request)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/files/{path:path}")
    def files(path: str) -> FileResponse:
        found = inside(bench.root, path)
        if found is None:
            raise HTTPException(404, "no such file in the output folder")
        return FileResponse(found)

    # ---- the form ---------------------------------------------------------------------------------------------
    @app.get("/api/form")
    def form_fields() -> dict[str, Any]:
        return {"fields": form.fields(), "sections": form.SECTIONS, "recipes": bench.recipe_files(),
                "output": bench.shown}

    @app.get("/api/recipe")
    def recipe(path: str = "") -> dict[str, Any]:
        try:
            raw = form.read_base(path)
        except TunelabError as err:
            raise HTTPException(400, str(err)) from None
        return {"path": path, "texts": form.base_texts(raw)}

    @app.post("/api/check")
    def check(body: RunRequest) -> dict[str, Any]:
        return _public(bench.plan(body.base, body.values, body.name))

    # ---- runs -------------------------------------------------------------------------------------------------
    @app.post("/api/runs")
    def start(body: RunRequest) -> JSONResponse:
        plan = bench.start(body.base, body.values, body.name, queue=body.queue)
        return JSONResponse(_public(plan), status_code=200 if plan["ok"] else 422)

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"runs": bench.runs(), "queue": bench.queue.items()}

    @app.get("/api/runs/{name}")
    def run(name: str) -> dict[str, Any]:
        found = bench.run(name, full=True)
        if found is None:
            raise HTTPException(404, f"no run named '{name}'")
        return found

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> dict[str, Any]:
        if not bench.stop(name):
            raise HTTPException(409, f"run '{name}' is not running")
        return {"stopping": name}

    @app.post("/api/runs/{name}/resume")
    def resume(name: str) -> dict[str, Any]:
        why = bench.resume(name)
        if why:
            raise HTTPException(409, why)
        return {"resumed": name}

    @app.delete("/api/queue/{item_id}")
    def unqueue(item_id: str) -> dict[str, Any]:
        if not bench.queue.remove(item_id):
            raise HTTPException(404, "no such queued run")
        return {"removed": item_id}

    # ---- comparisons ------------------------------------------------------------------------------------------
    @app.get("/api/compares")
    def compares() -> dict[str, Any]:
        return {"compares": [v for n in comparisons.names(bench.jobs, bench.root)
                             if (v := comparisons.view(bench.jobs, bench.root, n))],
                "presets": comparisons.presets(), "recipes": bench.recipe_files()}

    @app.post("/api/compares")
    def compare(body: CompareRequest) -> JSONResponse:
        plan = comparisons.start(bench.jobs, bench.root, bench.shown, **body.model_dump())
        return JSONResponse(_public(plan), status_code=200 if plan["ok"] else 422)

    @app.get("/api/compares/{name}")
    def comparison(name: str) -> dict[str, Any]:
        found = comparisons.view(bench.jobs, bench.root, name)
        if found is None:
            raise HTTPException(404, f"no comparison named '{name}'")
        return found

    @app.post("/api/compares/{name}/stop")
    def stop_compare(name: str) -> dict[str, Any]:
        if not bench.jobs.stop(f"compare-{name}"):
            raise HTTPException(409, f"comparison '{name}' is not running")
        return {"stopping": name}

    return app


def _public(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan without its absolute-path argv (the page shows the command as the user would type it)."""
    return {k: v for k, v in plan.items() if k != "argv"}
