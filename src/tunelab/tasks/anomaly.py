"""Anomaly detection figures: a threshold chosen on validation, ROC-AUC, PR-AUC and F1 at that threshold, and the
same figures for three plain baselines on the same features and split, so a VAE is never reported without them.

The baselines are scikit-learn's, fitted on the training rows (all normal) as the VAE sees them (scaled):
IsolationForest, PCA reconstruction error with as many components as the VAE has latent dimensions, and the mean
distance to the k nearest training rows. Each gets its own threshold on validation, like the VAE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.neighbors import NearestNeighbors

NEIGHBOURS = 5  # k of the nearest-neighbour baseline: the usual small k of kNN outlier scores


def best_f1_threshold(scores: np.ndarray, anomalous: np.ndarray) -> float:
    """The score threshold with the highest F1 on these (validation) rows; rows scoring at or above it are flagged."""
    precision, recall, thresholds = precision_recall_curve(anomalous, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def choose_threshold(scores: np.ndarray, anomalous: np.ndarray | None, quantile: float) -> tuple[float, str]:
    """A threshold from validation scores and how it was chosen: the best F1 when validation holds both normal and
    anomalous rows, else the given quantile of the scores (flagging the top 1 - quantile of normal-looking data)."""
    if anomalous is not None and 0 < anomalous.sum() < len(anomalous):
        return best_f1_threshold(scores, anomalous), "best F1 on validation"
    return float(np.quantile(scores, quantile)), f"{quantile:g} quantile of validation scores"


def detection_metrics(scores: np.ndarray, anomalous: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC and PR-AUC (average precision) of the scores, and precision, recall, F1 of flagging at the
    threshold. PR-AUC is read against the anomaly share, its value for random scores."""
    flagged = scores >= threshold
    hits = float((flagged & (anomalous == 1)).sum())
    precision = hits / max(float(flagged.sum()), 1.0)
    recall = hits / max(float(anomalous.sum()), 1.0)
    return {"roc_auc": float(roc_auc_score(anomalous, scores)),
            "pr_auc": float(average_precision_score(anomalous, scores)),
            "f1": 2 * precision * recall / max(precision + recall, 1e-12), "precision": precision, "recall": recall,
            "threshold": threshold, "anomaly_share": float(anomalous.mean())}


class Baselines:
    """The three sklearn detectors, fitted once on the scaled training rows; ``scores`` is higher for odder rows."""

    def __init__(self, train: np.ndarray, components: int, seed: int) -> None:
        self.forest = IsolationForest(n_estimators=200, random_state=seed).fit(train)
        self.pca = PCA(n_components=min(components, *train.shape), random_state=seed).fit(train)
        self.neighbours = NearestNeighbors(n_neighbors=min(NEIGHBOURS, len(train))).fit(train)

    def scores(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each baseline's anomaly score per row."""
        rebuilt = self.pca.inverse_transform(self.pca.transform(rows))
        distances, _ = self.neighbours.kneighbors(rows)
        return {"isolation_forest": -self.forest.score_samples(rows),
                f"pca_{self.pca.n_components_}": ((rows - rebuilt) ** 2).sum(1),
                f"knn_{self.neighbours.n_neighbors}": distances.mean(1)}


def detector_table(scores: dict[str, np.ndarray], validation: dict[str, np.ndarray], anomalous: np.ndarray,
                   validation_anomalous: np.ndarray, quantile: float) -> list[dict[str, Any]]:
    """One row per detector (the VAE first): its figures here at the threshold it chose on validation."""
    rows = []
    for name, values in scores.items():
        threshold, _ = choose_threshold(validation[name], validation_anomalous, quantile)
        rows.append({"detector": name} | detection_metrics(values, anomalous, threshold))
    return rows


def verdict(table: list[dict[str, Any]]) -> str:
    """One sentence on whether the VAE (first row) beats the baselines on ROC-AUC and PR-AUC, naming who beat it."""
    vae, others = table[0], table[1:]
    losses = []
    for key, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
        best = max(others, key=lambda row: row[key])
        if best[key] > vae[key]:
            losses.append(f"{best['detector']} beats it on {label} ({best[key]:.4f} vs {vae[key]:.4f})")
    if not losses:
        return "the VAE beats all three baselines on ROC-AUC and PR-AUC"
    return "the VAE loses: " + "; ".join(losses)
