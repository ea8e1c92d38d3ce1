"""report.md: the run report as Markdown, for a terminal, a diff or a repository; plots are linked from plots/ and
image examples are left to report.html (which holds them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tunelab.report.sections as s
from tunelab.report.synthetic import synthetic_lines


def md_table(headers: list[str], rows: list[list[str]] | list[tuple[str, ...]]) -> list[str]:
    clean = [[str(cell).replace("|", "\\|").replace("\n", " ⏎ ") for cell in row] for row in rows]
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *["| " + " | ".join(r) + " |" for r in clean], ""]


def markdown(summary: dict[str, Any], plots: dict[str, str], curve_note: str) -> str:
    """The report as Markdown; ``plots`` maps loss/confusion/drift to paths relative to the run folder."""
    lines = [f"# Run {Path(summary['run']).name}", "",
             f"Model **{summary['model']}**, task **{summary['task']}**, strategy **{summary['strategy']}**.", "",
             "## Before and after training", "", *md_table(["split", "metric", "before", "after"], s.before_after_rows(summary))]
    if "majority_baseline" in summary:
        lines += ["Majority-class baseline: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["majority_baseline"].items()), ""]
    if s.signatures(summary):
        lines += ["sacreBLEU signatures: " + "; ".join(f"`{sig}`" for sig in s.signatures(summary)), ""]
    split, detectors, verdict = s.detector_rows(summary)
    if detectors:
        lines += [f"## Anomaly detection ({split}; thresholds chosen on validation)", "",
                  *md_table(list(s.DETECTOR_COLUMNS), detectors), f"Verdict: {verdict}.", ""]
    split, quality = synthetic_lines(summary)
    if quality:
        lines += [f"## Synthetic data ({split})", "", *[f"- {line}" for line in quality], ""]
    if "loss" in plots:
        lines += ["## Curves", "", f"![loss curves]({plots['loss']})", "", curve_note, ""]
    split = s.classifier_split(summary)
    if split:
        lines += [f"## Per class ({split}, after training)", "",
                  *md_table(["class", "precision", "recall", "F1", "support"], s.per_class_rows(summary))]
        names, matrix = s.confusion(summary)
        if matrix and len(names) <= s.CONFUSION_TABLE_MAX:
            lines += ["Confusion matrix (rows: true label, columns: predicted):", "",
                      *md_table(["true \\ predicted", *names], [[name, *map(str, row)] for name, row in zip(names, matrix)])]
        if "confusion" in plots:
            lines += [f"![confusion matrix]({plots['confusion']})", ""]
    shown = [e for e in s.examples(summary) if not str(e.get("input") or "").startswith("data:")]
    if shown:
        lines += [f"## Sample predictions ({split})", "",
                  *md_table(["", "input", "gold", "predicted", "probability"],
                            [["✓" if e["gold"] == e["predicted"] else "✗", str(e["input"])[:200], e["gold"], e["predicted"],
                              f"{e['probability']:.3f}"] for e in shown])]
    elif s.examples(summary):
        lines += [f"Sample predictions with their images ({split}): see report.html.", ""]
    for name, relative in (summary.get("figures") or {}).items():
        lines += [f"![{name}]({relative})", ""]
    if s.generation_rows(summary):
        lines += ["## Samples (held-out, before and after training)", ""]
        for number, (where, fields) in enumerate(s.generation_rows(summary), start=1):
            lines += [f"**{where} sample {number}**", ""]
            lines += [f"- *{field}*: {text}".replace("\n", " ⏎ ") for field, text in fields] + [""]
    if s.drift_facts(summary):
        lines += ["## Weight drift", "", *md_table(["", "value"], s.drift_facts(summary))]
        if s.drift_groups(summary):
            lines += md_table(["depth", "relative change"], [[label, s.fmt(value)] for label, value in s.drift_groups(summary)])
    if s.data_rows(summary):
        lines += ["## Data", "", *md_table(["rows", "count"], s.data_rows(summary))]
    if s.cost_rows(summary):
        lines += ["## Cost", "", *md_table(["", "value"], s.cost_rows(summary))]
    return "\n".join(lines)
