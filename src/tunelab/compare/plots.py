"""The comparison's figures: the metric against each cost, the memory Pareto front, and the loss curves overlaid.

Points and the front are the validation figures that rank the variants; test is drawn beside them, choosing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tunelab.compare.results import DECIDES, REPORTED  # noqa: E402
from tunelab.compare.runner import RunResult  # noqa: E402
from tunelab.report.plots import save_figure  # noqa: E402


def _scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get(f"{DECIDES}_mean") is not None]


def _x(row: dict[str, Any], key: str) -> float:
    """A row's cost on the x axis; bytes in MiB."""
    return row[key] / 2**20 if key.endswith("_bytes") else row[key]


def metric_vs(rows: list[dict[str, Any]], key: str, label: str, metric: str, path: Path, *, log_x: bool = False,
              front: bool = False) -> Path:
    """The validation metric (mean, with the spread over seeds as an error bar) against one cost, each point labelled;
    the test mean beside it as a grey cross, reported only.

    With ``front`` the Pareto-optimal variants (nothing cheaper scores better on validation) are ringed and joined.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scored = _scored(rows)
    for i, r in enumerate(scored):
        x = _x(r, key)
        ax.errorbar(x, r[f"{DECIDES}_mean"], yerr=r[f"{DECIDES}_sd"] or 0, fmt="o", capsize=3,
                    label=f"{DECIDES} (decides)" if i == 0 else None)
        ax.annotate(r["variant"], (x, r[f"{DECIDES}_mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    tested = [r for r in scored if r.get(f"{REPORTED}_mean") is not None]
    if tested:
        ax.scatter([_x(r, key) for r in tested], [r[f"{REPORTED}_mean"] for r in tested], marker="x", color="grey",
                   label=f"{REPORTED} (reported, chose nothing)")
    if front:
        best = sorted((r for r in scored if r.get("pareto_memory")), key=lambda r: r[key])
        xs = [_x(r, key) for r in best]
        ax.plot(xs, [r[f"{DECIDES}_mean"] for r in best], "--", color="tab:red", label=f"Pareto front ({DECIDES})")
        ax.scatter(xs, [r[f"{DECIDES}_mean"] for r in best], s=160, facecolors="none", edgecolors="tab:red")
    if scored:
        ax.legend(loc="best", fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def loss_curves(results: list[RunResult], path: Path) -> Path:
    """Training loss against optimiser steps, one line per variant (the mean over its seeds at each logged step)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r.variant for r in results):
        curves = [_train_loss(r.run_dir) for r in results if r.variant == variant and r.summary and r.run_dir]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(steps, [sum(c[s] for c in curves) / len(curves) for s in steps], label=variant, alpha=0.8)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _train_loss(run_dir: Path) -> dict[int, float]:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return {}
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def all_plots(rows: list[dict[str, Any]], results: list[RunResult], metric: str, folder: Path) -> dict[str, str]:
    """Write every figure under ``folder/plots``; returns caption -> path relative to ``folder``."""
    plots = folder / "plots"
    shown = f"{DECIDES} {metric} (test beside it)"
    made = {
        f"{shown} against trainable parameters": metric_vs(
            rows, "trainable", "trainable parameters (log scale)", metric, plots / "metric_vs_params.png", log_x=True),
        f"{shown} against training time": metric_vs(
            rows, "train_seconds", "training time per run, one-off work included (s)", metric, plots / "metric_vs_time.png"),
        f"{shown} against peak memory (Pareto front on {DECIDES} marked)": metric_vs(
            rows, "peak_memory_bytes", "peak memory (MiB)", metric, plots / "metric_vs_memory.png", front=True),
        "training loss curves": loss_curves(results, plots / "loss_curves.png"),
    }
    return {caption: str(path.relative_to(folder)) for caption, path in made.items()}
