"""report.md and report.html: what a person reads after a run (the summary.json figures, explained), with the plots
written into plots/. summary.json is the report's one source of figures; metrics.jsonl gives the curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.io import atomic_write_text
import tunelab.report.plots as p
import tunelab.report.sections as s
from tunelab.report.markdown import markdown
from tunelab.report.page import html_page
from tunelab.report.sections import before_after_rows

__all__ = ["before_after_rows", "curve_note", "write_report"]


def curve_note(records: list[dict[str, Any]], metric: str) -> str:
    """What the curves plot shows, with the smoothing it used."""
    points = sum(1 for r in records if "train_loss" in r)
    if not points:
        return "No training loss was logged."
    return (f"Training loss at every logged step (faint) and its exponential moving average with weight "
            f"{p.smoothing_weight(points):g} on the past, bias-corrected ({points} points); validation loss at each "
            f"evaluation (dots); validation {metric} on the right axis; the dotted line marks the best step, whose "
            "weights became final/.")


def write_report(run_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write plots/*.png, report.md and report.html (self-contained: the plots are embedded) into the run folder."""
    best = summary.get("best") or {}
    metric = best.get("metric", "accuracy")
    folder = run_dir / "plots"
    files = {"loss": p.loss_curve(records, metric, folder / "loss.png", best.get("step"))}
    names, matrix = s.confusion(summary)
    if matrix:
        files["confusion"] = p.confusion_plot(names, matrix, s.classifier_split(summary) or "", folder / "confusion.png")
    groups = s.drift_groups(summary)
    if groups:
        files["drift"] = p.drift_plot(groups, folder / "drift.png")
    note = curve_note(records, metric)
    atomic_write_text(run_dir / "report.md", markdown(summary, {k: f"plots/{v.name}" for k, v in files.items()}, note))
    atomic_write_text(run_dir / "report.html", html_page(summary, files, note, s.task_figures(summary, run_dir)))
