"""Synthetic rows and images from a trained VAE, and the checks that say whether they are any good: how far each
column's distribution is from the real one, and how close each sample sits to its nearest training row, so that a
model that memorised training rows (and would leak them) is caught.

The memorisation check compares like with like: a sample that is a new row of the population is as likely to sit
nearest a training row as nearest a held-out real row (equal numbers of each); samples that sit nearest training
rows far more often than half the time are copies of them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.stats import binomtest, ks_2samp, wasserstein_distance
from sklearn.neighbors import NearestNeighbors

from tunelab.errors import RunError
from tunelab.io import write_json
from tunelab.tasks.vae_model import VAE

MEMORISED_SHARE = 0.6  # samples nearer a training row than a held-out one this often (0.5 expected) are copies


@torch.inference_mode()
def draw(model: VAE, n: int, seed: int) -> np.ndarray:
    """n samples in raw units: codes z ~ N(0, I) from a seeded generator, decoded. With a learned noise variance
    ('gaussian') the sample is drawn from p(x|z), noise included, so each column keeps its spread; with unit variance
    ('mse', which would swamp standardised columns) or pixels ('bce') it is the decoder's mean, the usual picture."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, model.latent, generator=generator, device=device)
    if model.likelihood != "gaussian":
        return model.mean_output(z).double().cpu().numpy()
    noise = torch.randn(n, model.dim, generator=generator, device=device) * (0.5 * model.noise()).exp()
    return model.unscale(model.decode(z) + noise).double().cpu().numpy()


def column_distances(real: np.ndarray, fake: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Per column: the Wasserstein-1 distance between real and synthetic values in units of the real standard
    deviation (0 = same distribution; 1 = off by a whole spread), the two-sample Kolmogorov-Smirnov statistic, and
    the real and synthetic mean and standard deviation."""
    rows = []
    for i, name in enumerate(names):
        spread = float(real[:, i].std()) or 1.0
        rows.append({"column": name, "wasserstein_in_std": float(wasserstein_distance(real[:, i], fake[:, i])) / spread,
                     "ks": float(ks_2samp(real[:, i], fake[:, i]).statistic),
                     "real_mean": float(real[:, i].mean()), "synthetic_mean": float(fake[:, i].mean()),
                     "real_std": float(real[:, i].std()), "synthetic_std": float(fake[:, i].std())})
    return rows


def nearest_real(fake: np.ndarray, train: np.ndarray, holdout: np.ndarray, seed: int) -> dict[str, Any]:
    """Is each sample nearer a training row than a held-out real row? Equal-sized random parts of both are compared
    (set size alone moves nearest distances), so a model that makes new rows sits nearer a training row about half
    the time; one that copies training rows, nearly always. Also: exact copies, and median distances (scaled units).
    """
    size = min(len(train), len(holdout))
    rng = np.random.default_rng(seed)
    near_train = NearestNeighbors(n_neighbors=1).fit(train[rng.choice(len(train), size, replace=False)])
    near_holdout = NearestNeighbors(n_neighbors=1).fit(holdout[rng.choice(len(holdout), size, replace=False)])
    to_train, to_holdout = near_train.kneighbors(fake)[0][:, 0], near_holdout.kneighbors(fake)[0][:, 0]
    nearer = int((to_train < to_holdout).sum())
    decided = nearer + int((to_train > to_holdout).sum())
    share = nearer / max(decided, 1)
    p_value = float(binomtest(nearer, decided, 0.5, alternative="greater").pvalue) if decided else 1.0
    exact = NearestNeighbors(n_neighbors=1).fit(train).kneighbors(fake)[0][:, 0]
    return {"nearer_train_share": share, "p_value": p_value, "rows_compared": size,
            "median_sample_to_train": float(np.median(to_train)),
            "median_sample_to_holdout": float(np.median(to_holdout)),
            "exact_copies": int((exact < 1e-6).sum()), "memorised": bool(share >= MEMORISED_SHARE and p_value < 1e-3)}


def write_table(path: Path, names: list[str], values: np.ndarray) -> None:
    """Samples as a CSV with the training table's column names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows([[f"{v:.6g}" for v in row] for row in values])


def write_images(folder: Path, values: np.ndarray, size: int, grayscale: bool) -> None:
    """Samples as PNG files sample-00000.png, ... (pixels in [0, 1] become 0..255)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if grayscale else (size, size, 3)
    for i, row in enumerate(values):
        pixels = np.clip(np.round(row.reshape(shape) * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L" if grayscale else "RGB").save(folder / f"sample-{i:05d}.png")


def synthesize(task: Any, splits: dict[str, list[dict[str, Any]]], n: int, out: Path, seed: int) -> dict[str, Any]:
    """Draw n samples from a run's VAE, write them (CSV for tables, a folder of PNGs for images) and return the
    quality report (also written beside them as JSON): column distances (tables) and nearest-real distances."""
    if task.cfg.input == "text":
        raise RunError(f"this VAE models {task.recipe.model.name} features of texts: a sample would be a feature "
                       "vector, not a text; tunelab sample writes tables and images")
    if n <= 0:
        raise RunError(f"--n {n}: give a positive number of samples")
    model = task.model
    fake = draw(model, n, seed)
    train = np.stack([f["x"] for f in splits["train"]]).astype(np.float64)
    holdout = np.stack([f["x"] for name in ("validation", "test") for f in splits.get(name, []) if not f["anomaly"]])
    scale = lambda x: (x - model.center.cpu().numpy()) / model.spread.cpu().numpy()  # noqa: E731
    report: dict[str, Any] = {"samples": n, "seed": seed,
                              "nearest_real": nearest_real(scale(fake), scale(train), scale(holdout), seed)}
    if task.cfg.input == "table":
        write_table(out, task.columns, fake)
        report["columns"] = column_distances(train, fake, task.columns)
        report_path = out.with_name(out.name + ".quality.json")
    else:
        write_images(out, fake, task.info["image_size"], task.info["grayscale"])
        report_path = out / "quality.json"
    write_json(report_path, report)
    report["report_path"] = str(report_path)
    return report
