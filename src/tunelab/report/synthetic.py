"""The report's "Synthetic data" section for generative runs (VAE, GAN): what the samples are worth for what
synthetic data is for, in sentences read from summary.json alone, and the sample grid for images."""

from __future__ import annotations

from typing import Any

def synthetic_lines(summary: dict[str, Any]) -> tuple[str, list[str]]:
    """(split, sentences) on the test split (else validation); no sentences for runs that judged no samples."""
    after = summary.get("after", {})
    split = "test" if "detection" in after.get("test", {}) else "validation"
    found = after.get(split, {})
    if "detection" not in found:
        return split, []
    lines = [f"Detection score {found['detection']:.4f}: the ROC-AUC of a random forest telling synthetic from real "
             "rows, out of fold (0.5: it cannot tell them apart; 1.0: every sample gives itself away)."]
    if "tstr_accuracy" in found:
        lines.append(f"Train on synthetic, test on real: accuracy {found['tstr_accuracy']:.4f}, against "
                     f"{found['real_accuracy']:.4f} for the same classifier trained on the real training rows.")
    near = found.get("nearest_real", {})
    verdict = " - the model MEMORISED training rows." if found.get("memorised") else "."
    lines.append(f"Nearest real row: a training row for {found['nearer_train_share']:.1%} of samples, a held-out row "
                 f"for the rest (about 50% for new rows; p = {near.get('p_value', float('nan')):.2g}); "
                 f"{found['exact_copies']} exact copies of training rows{verdict}")
    if found.get("columns"):
        worst = max(found["columns"], key=lambda c: c["wasserstein_in_std"])
        lines.append(f"Column distributions: mean Wasserstein distance {found['wasserstein_mean']:.3f} real standard "
                     f"deviations; the worst column is '{worst['column']}' ({worst['wasserstein_in_std']:.3f}).")
    return split, lines
