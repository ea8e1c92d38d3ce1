"""What the web app does, apart from HTTP: plan, start, stop and resume runs, keep the queue moving, and describe
every run in the output folder. The routes (app.py) only translate between this and JSON.

A run's state is read from its folder and its job record each time it is asked for (nothing is cached in memory),
so what the page shows after a restart of the app is what it showed before.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tunelab.compare.runner import COMPARE_MARKER
from tunelab.errors import TunelabError
from tunelab.runfolder import check_name
from tunelab.ui import form
from tunelab.ui.comparisons import COMPARE_LOG, FOLDER
from tunelab.ui.folder import (RUN_LOG, checkpoints, clean, headline, last_error, metrics, read_json, recipe_facts,
                               run_folders, tail)
from tunelab.ui.jobs import STATE, Jobs
from tunelab.ui.queue import Queue

BLANK = "# an empty base recipe: every key of a run started from a blank form comes from --set\n"


class Workbench:
    """The output folder, the processes started in it, and the queue; ``shown`` is the folder as the user wrote it
    (used in the commands the page shows)."""

    def __init__(self, root: Path, recipes: Path | None = None, shown: str | None = None) -> None:
        self.root = root.absolute()
        self.shown = shown or str(root)
        self.recipes = recipes
        self.jobs = Jobs(self.root)
        self.queue = Queue(self.root / STATE / "queue.json")
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the queue runner -------------------------------------------------------------------------------------
    def start_scheduler(self, every: float = 0.5) -> None:
        """A thread that notes ended processes and starts the next queued run when nothing of ours is running."""
        def loop() -> None:
            while not self._halt.wait(every):
                self.tick()

        self._thread = threading.Thread(target=loop, name="tunelab-ui-queue", daemon=True)
        self._thread.start()

    def stop_scheduler(self) -> None:
        self._halt.set()
        if self._thread:
            self._thread.join(5)
        self.jobs.close()

    def tick(self) -> None:
        self.jobs.reap()
        for key in list(self.jobs.children):  # logs move into their folders as soon as these exist
            if key.startswith("train-"):
                self.jobs.adopt_log(key, self.root / key.removeprefix("train-"), RUN_LOG, "recipe.yaml")
            else:
                folder = self.root / FOLDER / key.removeprefix("compare-")
                self.jobs.adopt_log(key, folder, COMPARE_LOG, COMPARE_MARKER)
        if self.queue.items() and not self.jobs.any_alive():
            item = self.queue.pop()
            if item:
                self.jobs.start(f"train-{item['name']}", item["argv"], self.jobs.staging_log(f"train-{item['name']}"),
                                name=item["name"], command=item["command"])

    # ---- planning a run ---------------------------------------------------------------------------------------
    def recipe_files(self) -> list[str]:
        """The recipe files the page offers (the recipes folder's *.yaml)."""
        if not self.recipes or not self.recipes.is_dir():
            return []
        return [str(p) for p in sorted(self.recipes.glob("*.y*ml"))]

    def base_path(self, base: str) -> str:
        """The base recipe file; a blank form gets an empty file of the app's own."""
        if base:
            return base
        blank = self.root / STATE / "blank.yaml"
        if not blank.is_file():
            blank.parent.mkdir(parents=True, exist_ok=True)
            blank.write_text(BLANK, encoding="utf-8")
        return str(blank)

    def plan(self, base: str, values: dict[str, str], name: str = "") -> dict[str, Any]:
        """The command a form would run, and every error (by field; '_name' for the run name, '_base' for the base
        file). ``ok`` only when tunelab train would accept the recipe."""
        errors: dict[str, str] = {}
        try:
            raw = form.read_base(base)
        except TunelabError as err:
            raw, errors["_base"] = {}, str(err)
        sets, bad = form.overrides(raw, values)
        errors |= bad | form.validate(raw, sets)
        run_name = name.strip() or self._auto_name(values.get("name") or str(raw.get("name") or "run"))
        try:
            check_name(run_name, "run name")
            if self.taken(run_name):
                errors["_name"] = f"a run named '{run_name}' exists or is queued; choose another name"
        except TunelabError as err:
            errors["_name"] = str(err)
        shown = form.command(base or self.base_path(""), sets, self.shown, run_name)
        argv = form.command(str(Path(self.base_path(base)).absolute()), sets, str(self.root), run_name)
        return {"name": run_name, "command": form.shown(shown), "argv": argv, "errors": errors, "ok": not errors}

    def _auto_name(self, recipe_name: str) -> str:
        stem = f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, n = stem, 1
        while self.taken(name):
            n += 1
            name = f"{stem}-{n}"
        return name

    def taken(self, name: str) -> bool:
        return (self.root / name).exists() or self.jobs.get(f"train-{name}") is not None or name in self.queue.names()

    # ---- runs -------------------------------------------------------------------------------------------------
    def start(self, base: str, values: dict[str, str], name: str = "", queue: bool = False) -> dict[str, Any]:
        """Start a run now, or queue it; a plan with errors is returned as it is (nothing started)."""
        with self.jobs.lock:  # the name is checked and taken at once: two quick clicks make one run, not two
            plan = self.plan(base, values, name)
            if plan["ok"] and queue:
                plan["queued"] = self.queue.add(plan["name"], plan["argv"], plan["command"])
            elif plan["ok"]:
                key = f"train-{plan['name']}"
                self.jobs.start(key, plan["argv"], self.jobs.staging_log(key), name=plan["name"],
                                command=plan["command"])
        return plan

    def stop(self, name: str) -> bool:
        return self.jobs.stop(f"train-{name}")

    def resume(self, name: str) -> str | None:
        """Continue a stopped or failed run (``tunelab train RUN --resume``); returns why not, or None."""
        key, folder = f"train-{name}", self.root / name
        view = self.run(name)
        if view is None:
            return f"no run named '{name}'"
        if not view["can_resume"]:
            return f"run '{name}' is {view['status']}: nothing to resume"
        if (folder / "recipe.yaml").is_file():
            argv = ["train", str(folder), "--resume"]
            self.jobs.start(key, argv, folder / RUN_LOG, name=name, command=form.shown(argv))
        else:  # it failed before tunelab made its folder: start it again as it was
            record = self.jobs.get(key) or {}
            self.jobs.start(key, record["argv"], self.jobs.staging_log(key), name=name)
        return None

    def names(self) -> list[str]:
        """Every run: folders in the output folder, and runs the app started that have no folder yet."""
        found = [p.name for p in run_folders(self.root)]
        pending = [key.removeprefix("train-") for key in self.jobs.keys("train")]
        return found + [n for n in pending if n not in found]

    def runs(self) -> list[dict[str, Any]]:
        return [view for name in self.names() if (view := self.run(name))]

    def run(self, name: str, full: bool = False) -> dict[str, Any] | None:
        """A run as the page shows it; ``full`` adds the curves, the log tail, the saved recipe and checkpoints."""
        key, folder = f"train-{name}", self.root / name
        record = self.jobs.get(key)
        if record is None and not (folder / "recipe.yaml").is_file():
            return None
        alive = record is not None and self.jobs.alive(key)
        log = self.jobs.adopt_log(key, folder, RUN_LOG, "recipe.yaml")
        summary = read_json(folder / "summary.json")
        status, error = _status(folder, record, alive, summary, log)
        view = {"name": name, "status": status, "error": error, **recipe_facts(folder),
                "progress": read_json(folder / "progress.json") if alive or summary is None else None,
                "headline": clean(headline(summary)) if summary else None,
                "started": (record or {}).get("started") or folder.stat().st_mtime,
                "report": f"{name}/report.html" if (folder / "report.html").is_file() else None,
                "can_stop": alive and not (record or {}).get("stop_requested"),
                "can_resume": status in ("stopped", "failed", "incomplete")}
        if full:
            recipe = folder / "recipe.yaml"
            view |= {"metrics": metrics(folder), "log": tail(log), "checkpoints": checkpoints(folder),
                     "recipe_yaml": recipe.read_text(encoding="utf-8") if recipe.is_file() else None,
                     "recipe_path": str(recipe) if recipe.is_file() else None,
                     "command": (record or {}).get("command") or form.shown((record or {}).get("argv") or []),
                     "summary": clean(summary)}
        return view


def _status(folder: Path, record: dict | None, alive: bool, summary: Any, log: Path | None) -> tuple[str, str | None]:
    """running / starting / stopping / finished / stopped / failed / incomplete, and the error that ended it."""
    if alive:
        if record and record.get("stop_requested"):
            return "stopping", None
        return ("running" if (folder / "recipe.yaml").is_file() else "starting"), None
    if summary is not None:
        return "finished", None
    error = last_error(log)
    if (record and record.get("stop_requested")) or (error or "").startswith("interrupted"):
        return "stopped", error
    if error or (record and record.get("exit") not in (None, 0)):
        return "failed", error or f"exited with status {record.get('exit') if record else '?'}"
    return "incomplete", None
