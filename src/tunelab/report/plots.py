"""Plots for a run: training and validation loss, and the chosen metric, against optimiser steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(records: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Train loss, validation loss and validation metric on one figure (metric on a second axis)."""
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "validation" and "loss" in r]
    score = [(r["step"], r[metric]) for r in records if r.get("split") == "validation" and metric in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    if score:
        twin = ax.twinx()
        twin.plot(*zip(*score), "s--", color="tab:green", label=f"validation {metric}")
        twin.set_ylabel(metric)
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (making the folder) and close a figure: every tunelab plot ends this way."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
