"""Plots for a run report (matplotlib, Agg): the loss curves with a smoothed training line, the confusion matrix and
the per-block weight drift. Each returns the PNG it wrote into the run folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smoothing_weight(points: int) -> float:
    """The EMA weight on the past for a training-loss line of ``points`` logged steps: light for short runs, where
    heavy smoothing would lag behind the whole curve, heavier for long noisy ones."""
    return 0.6 if points < 30 else 0.9 if points < 300 else 0.97


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard smooths): the first points are not pulled
    towards zero. ``weight`` is the share kept from the past at each step."""
    smoothed, running = [], 0.0
    for count, value in enumerate(values, start=1):
        running = weight * running + (1 - weight) * value
        smoothed.append(running / (1 - weight**count))
    return smoothed


def loss_curve(records: list[dict[str, Any]], metric: str, path: Path, best_step: int | None = None) -> Path:
    """Training loss (raw, faint, and its EMA), validation loss as points, and the validation metric on a second
    axis; a dotted line marks the best step (the one kept as final/)."""
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "validation" and "loss" in r]
    score = [(r["step"], r[metric]) for r in records if r.get("split") == "validation" and metric in r and metric != "loss"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if train:
        steps, losses = zip(*train)
        weight = smoothing_weight(len(losses))
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=1, label="train loss")
        ax.plot(steps, ema(list(losses), weight), color="tab:blue", linewidth=2,
                label=f"train loss, EMA (weight {weight:g} on the past)")
    if val:
        ax.plot(*zip(*val), "o", color="tab:orange", markersize=6, label="validation loss")
    if best_step is not None:
        ax.axvline(best_step, color="grey", linestyle=":", linewidth=1.5, label=f"best step ({best_step})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if score:
        twin = ax.twinx()
        twin.plot(*zip(*score), "s--", color="tab:green", markersize=5, linewidth=1, label=f"validation {metric}")
        twin.set_ylabel(metric)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.85)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def confusion_plot(names: list[str], matrix: list[list[int]], split: str, path: Path) -> Path:
    """Counts with rows = true label and columns = predicted; colour is the share of the true label's row, so a
    small class's errors show as plainly as a large one's."""
    size = len(names)
    side = min(11.0, max(3.6, 0.5 * size + 2.2))
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    shares = [[count / max(sum(row), 1) for count in row] for row in matrix]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if size <= 25:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8 if size > 12 else 10,
                        color="white" if shares[i][j] > 0.6 else "black")
    ticks = range(size)
    ax.set_xticks(ticks, names if size <= 40 else [""] * size, rotation=45 if size > 6 else 0, ha="right" if size > 6 else "center")
    ax.set_yticks(ticks, names if size <= 40 else [""] * size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {split} ({sum(map(sum, matrix))} examples)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, path)


def drift_plot(groups: list[tuple[str, float]], path: Path) -> Path:
    """Relative weight change per depth, bottom (embeddings) to top (head); a log axis when the changes span more
    than two orders of magnitude (a new head moves far more than a pretrained block)."""
    labels = [label for label, _ in groups]
    values = [value if math.isfinite(value) else 0.0 for _, value in groups]
    fig, ax = plt.subplots(figsize=(8, max(2.4, 0.32 * len(groups) + 1.2)))
    ax.barh(range(len(values)), values, color=["tab:grey" if v == 0 else "tab:purple" for v in values])
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    moved = [v for v in values if v > 0]
    log = bool(moved) and max(moved) / min(moved) > 100
    if log:
        ax.set_xscale("log")
    for y, value in enumerate(values):
        if value == 0:  # nothing to draw: say so where the bar would start
            ax.text(min(moved) / 2 if log else 0, y, " 0 (unchanged)", va="center", fontsize=8, color="dimgrey")
    ax.set_xlabel("‖θ_after − θ_before‖ / ‖θ_after‖")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (making the folder) and close a figure: every tunelab plot ends this way."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
