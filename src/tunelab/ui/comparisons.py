"""``tunelab compare`` from the web app: plan and start it as a process, and read its table as it fills.

A comparison writes ``<output>/compare/<name>/runs/<variant>-seed<k>/``, one ordinary run folder per variant and
seed, as each starts; results.json and report.html come at the end. So the table is built from those run folders
while it runs (each row: waiting, running with its progress, finished with its figures, or failed with its error), and
gains the ranks when results.json appears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.compare.presets import DEFAULT_PRESETS, PRESETS, parse_budget
from tunelab.compare.runner import COMPARE_MARKER, run_name
from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.runfolder import check_name
from tunelab.ui import form
from tunelab.ui.folder import clean, headline, last_error, read_json, tail
from tunelab.ui.jobs import Jobs

FOLDER = "compare"  # comparisons go under <output>/compare/, so the file route can serve their reports
COMPARE_LOG = "ui.log"  # the compare process's output, once its folder exists


def presets() -> list[dict[str, Any]]:
    return [{"name": p.name, "lr": p.lr, "why": p.why, "default": p.name in DEFAULT_PRESETS} for p in PRESETS.values()]


def plan(root: Path, shown: str, recipe: str, strategies: list[str], budget: str, seeds: str,
         name: str) -> dict[str, Any]:
    """The ``tunelab compare`` command for the page's choices, and the errors by field."""
    errors: dict[str, str] = {}
    base_name = "compare"
    try:
        base_name = load_recipe(recipe).name
    except TunelabError as err:
        errors["recipe"] = str(err)
    unknown = [s for s in strategies if s not in PRESETS]
    if unknown or not strategies:
        errors["strategies"] = f"unknown presets: {', '.join(unknown)}" if unknown else "choose at least one strategy"
    try:
        parse_budget(budget or None)
    except TunelabError as err:
        errors["budget"] = str(err)
    seed_list = [s.strip() for s in seeds.split(",") if s.strip()]
    if not all(s.lstrip("-").isdigit() for s in seed_list):
        errors["seeds"] = f"'{seeds}': expected integers such as 0,1,2"
    name = name.strip() or base_name
    try:
        check_name(name, "comparison name")
        if (root / FOLDER / name).exists():
            errors["name"] = f"a comparison named '{name}' exists; choose another name"
    except TunelabError as err:
        errors["name"] = str(err)

    def argv(recipe_path: str, out: str) -> list[str]:
        return ["compare", recipe_path, "--strategies", ",".join(strategies), *(["--budget", budget] if budget else []),
                *(["--seeds", ",".join(seed_list)] if seed_list else []), "--out", out, "--name", name]

    return {"name": name, "errors": errors, "ok": not errors, "seeds": [int(s) for s in seed_list] if not
            errors.get("seeds") else [], "argv": argv(str(Path(recipe).absolute()), str(root / FOLDER)),
            "command": form.shown(argv(recipe, f"{shown}/{FOLDER}"))}


def start(jobs: Jobs, root: Path, shown: str, **choices: Any) -> dict[str, Any]:
    planned = plan(root, shown, **choices)
    if planned["ok"]:
        key = f"compare-{planned['name']}"
        seeds = planned["seeds"] or [_recipe_seed(choices["recipe"])]
        jobs.start(key, planned["argv"], jobs.staging_log(key), name=planned["name"], command=planned["command"],
                   strategies=choices["strategies"], seeds=seeds)
    return planned


def _recipe_seed(recipe: str) -> int:
    return load_recipe(recipe).train_seed


def names(jobs: Jobs, root: Path) -> list[str]:
    found = [p.name for p in sorted((root / FOLDER).iterdir())] if (root / FOLDER).is_dir() else []
    return list(dict.fromkeys([*(k.removeprefix("compare-") for k in jobs.keys("compare")), *found]))


def view(jobs: Jobs, root: Path, name: str) -> dict[str, Any] | None:
    """A comparison's table as it stands: one row per planned variant and seed."""
    key, folder = f"compare-{name}", root / FOLDER / name
    record = jobs.get(key)
    if record is None and not (folder / COMPARE_MARKER).is_file():
        return None
    alive = record is not None and jobs.alive(key)
    log = jobs.adopt_log(key, folder, COMPARE_LOG, COMPARE_MARKER)
    results = read_json(folder / "results.json")
    ranks = {v.get("variant"): v.get("rank") for v in (results or {}).get("variants", [])}
    planned = [(v, s) for s in (record or {}).get("seeds", []) for v in (record or {}).get("strategies", [])]
    found = sorted(p.name for p in (folder / "runs").iterdir()) if (folder / "runs").is_dir() else []
    planned += [(n.rsplit("-seed", 1)[0], n.rsplit("-seed", 1)[1]) for n in found
                if "-seed" in n and n not in {run_name(v, int(s)) for v, s in planned}]
    rows = [_row(folder, variant, int(seed), alive, ranks) for variant, seed in planned]
    status = ("stopping" if record and record.get("stop_requested") else "running") if alive else \
        ("finished" if results else ("stopped" if record and record.get("stop_requested") else "failed"))
    return {"name": name, "status": status, "rows": rows, "command": (record or {}).get("command"),
            "error": last_error(log) if status == "failed" else None, "log": tail(log, lines=30),
            "report": f"{FOLDER}/{name}/report.html" if (folder / "report.html").is_file() else None,
            "can_stop": alive and not (record or {}).get("stop_requested")}


def _row(folder: Path, variant: str, seed: int, alive: bool, ranks: dict[str, Any]) -> dict[str, Any]:
    run = folder / "runs" / run_name(variant, seed)
    summary = read_json(run / "summary.json")
    progress = read_json(run / "progress.json")
    if summary:
        status = "finished"
    elif not run.exists():
        status = "waiting" if alive else "not run"
    else:
        error = last_error(folder / "logs" / f"{run.name}.log")
        status = "failed" if error else ("running" if alive else "stopped")
    row = {"variant": variant, "seed": seed, "status": status, "rank": ranks.get(variant), "progress": progress,
           "run": f"{FOLDER}/{folder.name}/runs/{run.name}"}
    if summary:
        row |= clean(headline(summary)) | {"trainable_share": (summary.get("parameters") or {}).get("trainable_share")}
    elif status == "failed":
        row["error"] = last_error(folder / "logs" / f"{run.name}.log")
    return row
