"""What each section of a run report says, read from summary.json alone: rows of already formatted cells that the
Markdown and HTML pages lay out in their own way, so both show the very same figures. A section whose data the run
did not produce (no labels, no drift groups, no samples) comes back empty, and the pages leave it out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.evaluate.memory import format_bytes

SHOWN = ("accuracy", "macro_f1", "loss", "perplexity", "bleu", "chrf", "rougeL", "exact_match",
         "elbo", "reconstruction", "kl", "anomaly_elbo", "roc_auc", "pr_auc", "f1",
         "detection", "tstr_accuracy", "real_accuracy", "nearer_train_share", "exact_copies", "wasserstein_mean")
DETECTOR_COLUMNS = ("detector", "roc_auc", "pr_auc", "f1", "precision", "recall", "threshold")
CONFUSION_TABLE_MAX = 15  # classes: a larger confusion matrix is shown as a plot only


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def before_after_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of (split, metric, before, after) for every headline metric computed."""
    rows = []
    for split, after in summary.get("after", {}).items():
        before = summary.get("before", {}).get(split, {})
        for key in SHOWN:
            if key in after:
                rows.append([split, key, fmt(before.get(key)), fmt(after[key])])
    return rows


def detector_rows(summary: dict[str, Any]) -> tuple[str, list[list[str]], str]:
    """An anomaly detector's table after training (split, rows, verdict): the task's model and its baselines on the
    test split (else validation), each at the threshold it chose on validation; empty when the task has none."""
    after = summary.get("after", {})
    split = "test" if "detectors" in after.get("test", {}) else "validation"
    table = after.get(split, {}).get("detectors")
    if not table:
        return split, [], ""
    return split, [[fmt(row.get(key)) for key in DETECTOR_COLUMNS] for row in table], after[split].get("verdict", "")


def signatures(summary: dict[str, Any]) -> list[str]:
    """The sacreBLEU signatures of the BLEU and chrF figures: what makes them comparable with other papers' numbers."""
    found = {value for split in summary.get("after", {}).values() for key, value in split.items() if key.endswith("_signature")}
    return sorted(found)


def generation_rows(summary: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Generated samples per split as (split, [(field, text)]) with fields input, reference, before, after."""
    return [(split, [(field, str(sample.get(field) or "–")) for field in ("input", "reference", "before", "after")])
            for split, samples in summary.get("samples", {}).items() for sample in samples]


def classifier_split(summary: dict[str, Any]) -> str | None:
    """The split whose per-class figures the report shows: test if it was evaluated, else validation; None for
    tasks without labels."""
    after = summary.get("after", {})
    return next((split for split in ("test", "validation") if "per_class" in after.get(split, {})), None)


def per_class_rows(summary: dict[str, Any]) -> list[list[str]]:
    """(class, precision, recall, F1, support) on the classifier split after training, in label order."""
    split = classifier_split(summary)
    if split is None:
        return []
    table = summary["after"][split]["per_class"]
    return [[name, fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), str(row["support"])]
            for name, row in table.items()]


def confusion(summary: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
    """Label names and the confusion matrix after training (rows true, columns predicted); empty without labels."""
    split = classifier_split(summary)
    if split is None or "confusion_matrix" not in summary["after"][split]:
        return [], []
    return list(summary["after"][split]["per_class"]), summary["after"][split]["confusion_matrix"]


def examples(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Predictions on the classifier split after training (the split's first examples and most confident mistakes)."""
    split = classifier_split(summary)
    return list(summary["after"][split].get("examples", [])) if split else []


def task_figures(summary: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Figures a task drew into the run folder (``summary["figures"]``: name -> path relative to it, e.g. a GAN's
    sample grid), those whose file exists."""
    found = {name: run_dir / relative for name, relative in (summary.get("figures") or {}).items()}
    return {name: path for name, path in found.items() if path.is_file()}


def drift_groups(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """(group label, relative change) per depth, bottom to top: 0 is what precedes the first block (embeddings or
    stem), 1..N the blocks, N+1 what follows the last block (final norm, pooler, head)."""
    per_group = {int(depth): float(value) for depth, value in
                 ((summary.get("weight_drift") or {}).get("per_group") or {}).items()}  # int keys, or str from JSON
    if not per_group:
        return []
    top = max(per_group)
    names = {0: "0 · embeddings / stem", top: f"{top} · after the blocks (head)"}
    return [(names.get(depth, f"{depth} · block {depth}"), value) for depth, value in sorted(per_group.items())]


def drift_facts(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The overall weight change and how many tensors moved at all (a freezing strategy's claim, checked)."""
    drift = summary.get("weight_drift")
    if not drift:
        return []
    facts = [("overall ‖θ_after − θ_before‖ / ‖θ_after‖", fmt(drift.get("overall"))),
             ("tensors compared / changed", f"{drift.get('n_compared', '–')} / {drift.get('tensors_changed', '–')}"),
             ("single weights changed", f"{drift.get('elements_changed', 0):,}")]
    if drift.get("fixed_changed"):
        facts.append(("frozen tensors that changed anyway (a bug)", ", ".join(drift["fixed_changed"])))
    return facts


def data_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Where every row went: kept per split, skipped or left out by reason, truncated and converted inputs."""
    data = summary.get("data")
    if not data:
        return []
    kept = data.get("rows", {})
    skipped = data.get("skipped", {})
    rows = [(f"kept for {split}", f"{count:,}") for split, count in kept.items()]
    rows += [(f"skipped: {reason}", f"{count:,}") for reason, count in skipped.items()]
    rows.append(("rows accounted for (kept + skipped)", f"{sum(kept.values()) + sum(skipped.values()):,}"))
    rows.append(("inputs truncated to task.max_length", f"{data.get('truncated', 0):,}"))
    rows += [(f"kept after conversion: {what}", f"{count:,}") for what, count in data.get("converted", {}).items()]
    rows += [(f"reading the source: {what}", f"{count:,}") for what, count in (data.get("source") or {}).items()]
    return rows


def cost_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Time, throughput, memory and parameter counts, each only when the summary has it."""
    rows: list[tuple[str, str]] = []
    p = summary.get("parameters")
    if p:
        rows.append(("parameters", f"{p['total']:,} total, {p['trainable']:,} trainable ({p['trainable_share']:.2%}), "
                                   f"{p['frozen']:,} frozen"))
    steps = summary.get("steps")
    if steps is not None:
        ends = [why for key, why in (("stopped_early", "stopped early"), ("out_of_time", "out of time")) if summary.get(key)]
        rows.append(("optimiser steps", f"{steps} (epochs completed: {summary.get('epochs', '–')})"
                                        + (f", {', '.join(ends)}" if ends else "")))
    if summary.get("skipped_steps"):
        rows.append(("steps skipped (non-finite loss or gradient)", str(summary["skipped_steps"])))
    if "wall_seconds" in summary:
        rows.append(("wall time, whole run (loading, evaluations, saving)", f"{summary['wall_seconds']:.1f} s"))
    if "train_seconds" in summary:
        one_off = summary.get("one_off_seconds", 0.0) or 0.0
        rows.append(("training time", f"{summary['train_seconds']:.1f} s"))
        if one_off:
            rows.append(("of which one-off work (feature caches)", f"{one_off:.1f} s"))
        if steps:
            rows.append(("seconds per step (one-off work apart)", f"{(summary['train_seconds'] - one_off) / steps:.3f}"))
    if "examples_per_second" in summary:
        rows.append(("training examples per second", f"{summary['examples_per_second']:.1f}"))
    memory = [("peak resident memory of the process", "peak_rss_bytes"),
              ("resident memory before training", "rss_before_train_bytes"),
              ("peak resident memory during training", "train_peak_rss_bytes"),
              ("peak accelerator memory", "peak_cuda_bytes")]
    rows += [(label, format_bytes(summary[key])) for label, key in memory if summary.get(key)]
    if summary.get("processes", 1) > 1:
        rows.append(("processes", str(summary["processes"])))
    rows += [(f"speed-up: {name}", str(note)) for name, note in (summary.get("speedups") or {}).items()]
    return rows
