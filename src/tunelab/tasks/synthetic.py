"""Synthetic rows and images from a trained generative model (VAE or GAN), and the checks that say whether they are
any good for what synthetic data is for: a classifier trained on them and tested on real rows (TSTR) beside the same
classifier trained on real rows; how well a classifier tells them from real rows (the detection score, 0.5 = it
cannot); how far each column's distribution is from the real one; and how close each sample sits to its nearest
training row, so that a model that memorised training rows (and would leak them) is caught.

Both classifiers are scikit-learn random forests: no scaling to get wrong, no tuning, and able to find any
difference a marginal distance would miss (a pair of columns that never co-occur, a stroke no real digit has).

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
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors

from tunelab.errors import RunError
from tunelab.io import write_json
from tunelab.tasks.vae_model import VAE

MEMORISED_SHARE = 0.6  # samples nearer a training row than a held-out one this often (0.5 expected) are copies
TREES = 50  # random-forest size of the detection and TSTR classifiers
MIN_ROWS = 10  # real and synthetic rows the detection score's 5-fold cross-validation needs at the least


def _forest(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=TREES, random_state=seed, n_jobs=1)


def detection_score(real: np.ndarray, fake: np.ndarray, seed: int) -> float:
    """ROC-AUC of a classifier telling real rows from synthetic ones, out of fold (5-fold cross-validation on equal
    numbers of each): 0.5 means it cannot tell them apart, 1.0 that every synthetic row gives itself away."""
    size = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    rows = np.concatenate([real[rng.choice(len(real), size, replace=False)],
                           fake[rng.choice(len(fake), size, replace=False)]])
    is_fake = np.repeat([0, 1], size)
    folds = StratifiedKFold(n_splits=min(5, size), shuffle=True, random_state=seed)
    scores = cross_val_predict(_forest(seed), rows, is_fake, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(is_fake, scores))


def tstr(fake: np.ndarray, fake_labels: np.ndarray, train: np.ndarray, train_labels: np.ndarray,
         test: np.ndarray, test_labels: np.ndarray, seed: int) -> dict[str, float]:
    """Train on synthetic, test on real: the accuracy on real held-out rows of a classifier trained on the
    synthetic rows, beside the same classifier trained on the real training rows (what synthetic data must
    approach to replace them)."""
    synthetic = _forest(seed).fit(fake, fake_labels)
    real = _forest(seed).fit(train, train_labels)
    return {"tstr_accuracy": float(accuracy_score(test_labels, synthetic.predict(test))),
            "real_accuracy": float(accuracy_score(test_labels, real.predict(test)))}


def quality(fake: np.ndarray, real: np.ndarray, train: np.ndarray, seed: int, columns: list[str] | None = None,
            labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Every check of synthetic rows against real held-out rows ``real`` and the training rows, in scaled units:
    detection score, nearest real rows, per-column distances (tables: ``columns``), and TSTR when ``labels`` gives
    (synthetic, training, held-out) classes."""
    if min(len(fake), len(real)) < MIN_ROWS:
        raise RunError(f"{len(fake)} synthetic and {len(real)} real rows: judging synthetic data needs at least "
                       f"{MIN_ROWS} of each; evaluate on a larger split")
    near = nearest_real(fake, train, real, seed)
    out: dict[str, Any] = {"detection": detection_score(real, fake, seed), "nearer_train_share": near["nearer_train_share"],
                           "exact_copies": near["exact_copies"], "memorised": near["memorised"], "nearest_real": near}
    if columns:
        out["columns"] = column_distances(real, fake, columns)
        out["wasserstein_mean"] = float(np.mean([c["wasserstein_in_std"] for c in out["columns"]]))
    if labels is not None:
        out |= tstr(fake, labels[0], train, labels[1], real, labels[2], seed)
    return out


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


def write_table(path: Path, names: list[str], values: np.ndarray, labels: list[str] | None = None) -> None:
    """Samples as a CSV with the training table's column names (and the label column last, when conditional)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows([[f"{v:.6g}" for v in row] + ([labels[i]] if labels else []) for i, row in enumerate(values)])


def write_images(folder: Path, values: np.ndarray, size: int, grayscale: bool,
                 labels: list[str] | None = None) -> None:
    """Samples as PNG files sample-00000.png, ... (pixels in [0, 1] become 0..255); with labels, one subfolder per
    class (an image folder tunelab trains a classifier on)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if grayscale else (size, size, 3)
    for i, row in enumerate(values):
        pixels = np.clip(np.round(row.reshape(shape) * 255.0), 0, 255).astype(np.uint8)
        where = folder / labels[i] if labels else folder
        where.mkdir(exist_ok=True)
        Image.fromarray(pixels, mode="L" if grayscale else "RGB").save(where / f"sample-{i:05d}.png")


def sample_grid(path: Path, values: np.ndarray, size: int, grayscale: bool, per_row: int = 8, zoom: int = 4) -> None:
    """Samples tiled ``per_row`` to a row in one PNG (a conditional model's draws one class per row, in label order),
    each pixel drawn ``zoom`` times as large, with a one-pixel gap."""
    shape = (size, size) if grayscale else (size, size, 3)
    rows = -(-len(values) // per_row)
    cell = size + 1
    canvas = np.ones((rows * cell + 1, per_row * cell + 1) + shape[2:], dtype=np.float64)
    for i, row in enumerate(values):
        top, left = 1 + (i // per_row) * cell, 1 + (i % per_row) * cell
        canvas[top : top + size, left : left + size] = row.reshape(shape).clip(0, 1)
    pixels = np.round(canvas * 255).astype(np.uint8).repeat(zoom, 0).repeat(zoom, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L" if grayscale else "RGB").save(path)


def synthesize(task: Any, splits: dict[str, list[dict[str, Any]]], n: int, out: Path, seed: int) -> dict[str, Any]:
    """Draw n samples from a run's generative model (``task.draw``), write them (CSV for tables, a folder of PNGs
    for images; a label column or class subfolders when the model is conditional) and return the quality report
    (also written beside them as JSON): column distances (tables) and nearest-real distances."""
    if task.cfg.input == "text":
        raise RunError(f"this model generates {task.recipe.model.name} features of texts: a sample would be a feature "
                       "vector, not a text; tunelab sample writes tables and images")
    if n <= 0:
        raise RunError(f"--n {n}: give a positive number of samples")
    model = task.model
    fake, labels = task.draw(model, n, seed)
    train = np.stack([f["x"] for f in splits["train"]]).astype(np.float64)
    holdout = np.stack([f["x"] for name in ("validation", "test") for f in splits.get(name, []) if not f.get("anomaly")])
    scale = lambda x: (x - model.center.cpu().numpy()) / model.spread.cpu().numpy()  # noqa: E731
    report: dict[str, Any] = {"samples": n, "seed": seed,
                              "nearest_real": nearest_real(scale(fake), scale(train), scale(holdout), seed)}
    if task.cfg.input == "table":
        names = task.columns + ([task.label_col] if labels else [])
        write_table(out, names, fake, labels)
        report["columns"] = column_distances(train, fake, task.columns)
        report_path = out.with_name(out.name + ".quality.json")
    else:
        write_images(out, fake, task.info["image_size"], task.info["grayscale"], labels)
        report_path = out / "quality.json"
    write_json(report_path, report)
    report["report_path"] = str(report_path)
    return report
