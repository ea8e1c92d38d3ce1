"""report.md and report.html: what a person reads after a run (the summary.json figures, explained)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tunelab.evaluate.memory import format_bytes
from tunelab.report.plots import loss_curve
from tunelab.io import atomic_write_text

_SHOWN = ("accuracy", "macro_f1", "loss", "perplexity", "bleu", "chrf", "rougeL", "exact_match",
          "elbo", "reconstruction", "kl", "anomaly_elbo", "roc_auc", "pr_auc", "f1")
_DETECTOR_COLUMNS = ("detector", "roc_auc", "pr_auc", "f1", "precision", "recall", "threshold")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def before_after_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of (split, metric, before, after) for every headline metric computed."""
    rows = []
    for split, after in summary.get("after", {}).items():
        before = summary.get("before", {}).get(split, {})
        for key in _SHOWN:
            if key in after:
                rows.append([split, key, _fmt(before.get(key)), _fmt(after[key])])
    return rows


def detector_rows(summary: dict[str, Any]) -> tuple[str, list[list[str]], str]:
    """An anomaly detector's table after training (split, rows, verdict): the task's model and its baselines on the
    test split (else validation), each at the threshold it chose on validation; empty when the task has none."""
    after = summary.get("after", {})
    split = "test" if "detectors" in after.get("test", {}) else "validation"
    table = after.get(split, {}).get("detectors")
    if not table:
        return split, [], ""
    return split, [[_fmt(row.get(key)) for key in _DETECTOR_COLUMNS] for row in table], after[split].get("verdict", "")


def signatures(summary: dict[str, Any]) -> list[str]:
    """The sacreBLEU signatures of the BLEU and chrF figures: what makes them comparable with other papers' numbers."""
    found = {value for split in summary.get("after", {}).values() for key, value in split.items() if key.endswith("_signature")}
    return sorted(found)


def sample_rows(summary: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Generated samples per split as (split, [(field, text)]) with fields input, reference, before, after."""
    return [(split, [(field, str(sample.get(field) or "–")) for field in ("input", "reference", "before", "after")])
            for split, samples in summary.get("samples", {}).items() for sample in samples]


def markdown(summary: dict[str, Any], plot: str) -> str:
    """The report as Markdown."""
    p = summary["parameters"]
    lines = [
        f"# Run {Path(summary['run']).name}",
        "",
        f"Model **{summary['model']}**, task **{summary['task']}**, strategy **{summary['strategy']}**.",
        "",
        "## Before and after training",
        "",
        "| split | metric | before | after |",
        "|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in before_after_rows(summary)],
    ]
    if "majority_baseline" in summary:
        lines += ["", "Majority-class baseline: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["majority_baseline"].items())]
    if signatures(summary):
        lines += ["", "sacreBLEU signatures: " + "; ".join(f"`{sig}`" for sig in signatures(summary))]
    split, detectors, verdict = detector_rows(summary)
    if detectors:
        lines += ["", f"## Anomaly detection ({split}; thresholds chosen on validation)", "",
                  "| " + " | ".join(_DETECTOR_COLUMNS) + " |", "|" + "---|" * len(_DETECTOR_COLUMNS),
                  *["| " + " | ".join(r) + " |" for r in detectors], "", f"Verdict: {verdict}."]
    drift = summary.get("weight_drift", {})
    lines += [
        "", "## Cost", "",
        f"- Parameters: {p['total']:,} total, {p['trainable']:,} trainable ({p['trainable_share']:.2%}), {p['frozen']:,} frozen",
        f"- Steps: {summary['steps']} ({summary['epochs']} epochs){' — stopped early' if summary['stopped_early'] else ''}",
        f"- Training time: {summary['train_seconds']} s, {summary['examples_per_second']} examples/s; wall {summary['wall_seconds']} s",
        f"- Peak resident memory of the process: {format_bytes(summary['peak_rss_bytes'])}",
        f"- Weight drift ‖θ_after − θ_before‖ / ‖θ_after‖: {_fmt(drift.get('overall'))}",
        "", "## Data", "",
        f"- Rows per split: {summary['data']['rows']}",
        f"- Skipped rows by reason: {summary['data']['skipped'] or 'none'}",
        f"- Truncated inputs: {summary['data']['truncated']}",
        f"- Source preparation: {summary['data']['source'] or 'none'}",
        "", "## Curves", "", f"![loss]({plot})", "",
    ]
    if sample_rows(summary):
        lines += ["## Samples (held-out, before and after training)", ""]
        for number, (split, fields) in enumerate(sample_rows(summary), start=1):
            lines += [f"**{split} sample {number}**", ""]
            lines += [f"- *{field}*: {text}".replace("\n", " ⏎ ") for field, text in fields] + [""]
    return "\n".join(lines)


def html_page(summary: dict[str, Any], plot: str) -> str:
    """The same report as a standalone HTML page."""
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in before_after_rows(summary))
    p = summary["parameters"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(Path(summary['run']).name)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}table{{border-collapse:collapse}}</style>
</head><body><h1>Run {html.escape(Path(summary['run']).name)}</h1>
<p>Model <b>{html.escape(summary['model'])}</b>, task <b>{summary['task']}</b>, strategy <b>{summary['strategy']}</b>.</p>
<h2>Before and after</h2><table><tr><th>split</th><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>
{_html_detectors(summary)}
<h2>Cost</h2><p>{p['total']:,} parameters, {p['trainable']:,} trainable ({p['trainable_share']:.2%}); {summary['steps']} steps in
{summary['train_seconds']} s ({summary['examples_per_second']} examples/s); peak memory {format_bytes(summary['peak_rss_bytes'])}.</p>
<h2>Curves</h2><img src="{plot}" alt="loss curves">{_html_samples(summary)}</body></html>"""


def _html_detectors(summary: dict[str, Any]) -> str:
    split, detectors, verdict = detector_rows(summary)
    if not detectors:
        return ""
    head = "".join(f"<th>{c}</th>" for c in _DETECTOR_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in detectors)
    return (f"<h2>Anomaly detection ({split}; thresholds chosen on validation)</h2><table><tr>{head}</tr>{body}</table>"
            f"<p>Verdict: {html.escape(verdict)}.</p>")


def _html_samples(summary: dict[str, Any]) -> str:
    """Signatures and a table per generated sample (input, reference, before, after), escaped."""
    out = "".join(f"<p><code>{html.escape(sig)}</code></p>" for sig in signatures(summary))
    if sample_rows(summary):
        out += "<h2>Samples (held-out, before and after training)</h2>"
    for split, fields in sample_rows(summary):
        cells = "".join(f"<tr><th>{field}</th><td>{html.escape(text)}</td></tr>" for field, text in fields)
        out += f"<table><caption>{html.escape(split)}</caption>{cells}</table><br>"
    return out


def write_report(run_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write plots/loss.png, report.md and report.html into the run folder."""
    metric = summary.get("best", {}).get("metric", "accuracy")
    loss_curve(records, metric, run_dir / "plots" / "loss.png")
    atomic_write_text(run_dir / "report.md", markdown(summary, "plots/loss.png"))
    atomic_write_text(run_dir / "report.html", html_page(summary, "plots/loss.png"))
