"""``tunelab compare``: one recipe, many strategies, one table of quality against cost, measured on the user's data.

``compare(recipe)`` runs every variant (a strategy preset with its learning rate) at every seed in its own process,
then writes ``compare/<name>/``: report.md, report.html with plots, results.csv, results.json, and runs/ (one ordinary
run folder per variant and seed), logs/ (each process's output). Rerunning the same command resumes: finished
variants are skipped. Variants are ranked on validation; test is reported beside it and chooses nothing.
``--name`` is one plain folder name under ``--out``, and ``--overwrite`` deletes only a folder that compare wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.compare.presets import DEFAULT_PRESETS, PRESETS, Invalid, Preset, load_strategy_file, parse_budget, pick_variants
from tunelab.compare.runner import Plan, RunResult, machine_info, prepare_folder, run_comparison
from tunelab.recipe import Recipe, load_recipe
from tunelab.runfolder import check_name

__all__ = ["Comparison", "compare", "PRESETS", "DEFAULT_PRESETS"]


@dataclass
class Comparison:
    """What a comparison produced: its folder, one row per variant, one result per run, and the Markdown table."""

    folder: Path
    rows: list[dict[str, Any]]
    results: list[RunResult]
    table: str


def ranking_metric(recipe: Recipe) -> tuple[str, str]:
    """The validation metric variants are ranked on: the recipe's eval.metric, unless it keeps its task's default
    and the task names a better one to compare variants by (a VAE: ROC-AUC when it detects anomalies, else the
    ELBO, whose beta is 1 for every variant while the loss weighs KL by each variant's own beta)."""
    if (recipe.eval.metric, recipe.eval.mode) == type(recipe.task).default_metric:
        return recipe.task.ranking_metric() or (recipe.eval.metric, recipe.eval.mode)
    return recipe.eval.metric, recipe.eval.mode


def compare(recipe: str | Path, *, strategies: list[str] | None = None, strategy_file: str | Path | None = None,
            seeds: list[int] | None = None, budget: str | None = None, name: str | None = None,
            out: str | Path = "compare", overrides: list[str] | None = None, overwrite: bool = False,
            echo: Callable[[str], None] = print) -> Comparison:
    """Train the recipe once per strategy variant and seed, on identical data and budget, and report the figures.

    ``strategies`` names presets (default: all of them, or only the strategy file's variants when a file is given);
    ``budget`` is ``None`` (200 steps), ``recipe`` (the recipe's own), a step count ``300``, epochs ``2ep`` or a time ``5m``; ``seeds``
    vary the training seed only (default: the recipe's). ``overrides`` (``KEY=VALUE``) apply to every variant.
    ``name`` must be a plain folder name; ``overwrite`` replaces only an earlier comparison, never another folder.
    """
    from tunelab.compare.plots import all_plots
    from tunelab.compare.report import write_report
    from tunelab.compare.results import DECIDES, REPORTED, aggregate, markdown_table, write_results

    recipe_path = Path(recipe)
    base = load_recipe(recipe_path, overrides)
    custom: dict[str, Preset | Invalid] = load_strategy_file(Path(strategy_file), base.train.lr) if strategy_file else {}
    names = strategies if strategies is not None else ([] if custom else DEFAULT_PRESETS)
    folder = Path(out) / (check_name(name) if name else check_name(base.name, "recipe name"))
    plan = Plan(recipe_path, folder, pick_variants(names, custom), seeds or [base.train_seed], parse_budget(budget),
                list(overrides or []))
    prepare_folder(folder, overwrite)  # only once every argument is known to be good
    machine = machine_info()
    echo(f"comparing {len(plan.variants)} variants x {len(plan.seeds)} seed(s) in {folder}; budget: {plan.budget.describe()}")
    results = run_comparison(plan, echo)
    metric, mode = ranking_metric(base)
    rows = aggregate(results, metric, mode)
    first = next((r.summary for r in results if r.summary), {})
    meta = {
        "recipe": {"path": str(recipe_path), "model": base.model.name, "task": base.task.type,
                   "data": base.data.dataset or base.data.train, "seed": base.seed, "batch_size": base.train.batch_size},
        "rows": ", ".join(f"{k} {v}" for k, v in first.get("data", {}).get("rows", {}).items()) or "no run finished",
        "metric": metric, "mode": mode, "decided_by": DECIDES, "reported": REPORTED,
        "budget": plan.budget.describe(), "seeds": plan.seeds, "overrides": plan.overrides,
        "machine": machine, "load_average_end": round(os.getloadavg()[0], 2),
    }
    plots = all_plots(rows, results, metric, folder)
    write_results(folder, rows, results, meta)
    write_report(plan, rows, results, meta, plots)
    return Comparison(folder, rows, results, markdown_table(rows, metric))
