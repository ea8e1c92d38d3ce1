"""report.html: the run report as one self-contained page. Styles are inline, plots and image examples are PNG data
URIs, and nothing is fetched from anywhere (no fonts, scripts or CDNs), so the page opens offline, from a file, in
``tunelab ui`` or as an e-mail attachment alike. Every section appears only when the run produced its data."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import tunelab.report.sections as s
from tunelab.report.synthetic import synthetic_lines

STYLE = """
:root{--ink:#1d2330;--muted:#5b6474;--line:#dde2ea;--card:#fff;--bg:#f4f6f9;--good:#1a7f37;--bad:#c0392b;--accent:#3d5afe}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#1d2330;color:#fff;padding:22px 32px 14px}header h1{margin:0 0 4px;font-size:22px}
header .meta{color:#c9d1e0;margin:0}header nav{margin-top:12px;display:flex;flex-wrap:wrap;gap:6px}
header nav a{color:#fff;text-decoration:none;font-size:13px;padding:3px 10px;border:1px solid #4a5368;border-radius:12px}
header nav a:hover{background:#4a5368}main{max-width:1100px;margin:0 auto;padding:20px 24px 40px}
.headline{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:18px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:150px}
.stat b{display:block;font-size:22px}.stat span{color:var(--muted);font-size:12px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 22px;margin:16px 0}
section h2{margin:0 0 10px;font-size:18px}.note{color:var(--muted);font-size:13px;margin:6px 0 10px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px}
th,td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f6;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.confusion td{text-align:right;min-width:2.6em}table.confusion td.diag{background:#e6f4ea;font-weight:600}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.ok{color:var(--good);font-weight:700}.ko{color:var(--bad);font-weight:700}
td.text{max-width:560px;white-space:pre-wrap;word-break:break-word}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;
text-align:center;width:130px;font-size:12px}.grid img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated}
figure.wrong{border-color:var(--bad)}code{font-size:12px;background:#f0f2f6;padding:1px 4px;border-radius:3px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 30px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def data_uri(path: Path) -> str:
    """A PNG file as a data URI, so the page carries its plots."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def table(headers: list[str], rows: list[list[str]] | list[tuple[str, ...]], ident: str, numeric: set[int] = frozenset(),
          css: str = "") -> str:
    """An escaped table; ``numeric`` column indices are right-aligned."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f'<table id="{ident}"{f" class={css}" if css else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{esc(title)}</h2>{body}</section>'


def headline(summary: dict[str, Any]) -> str:
    """The few numbers a reader looks for first: the chosen metric at its best, before and after on test."""
    best = summary.get("best") or {}
    stats = []
    if best.get("value") is not None:
        stats.append((s.fmt(best["value"]), f"best validation {best.get('metric')} (step {best.get('step')})"))
    test_after, test_before = summary.get("after", {}).get("test", {}), summary.get("before", {}).get("test", {})
    metric = best.get("metric")
    if metric in test_after:
        before = f" (before: {s.fmt(test_before[metric])})" if metric in test_before else ""
        stats.append((s.fmt(test_after[metric]), f"test {metric} after training{before}"))
    if "majority_baseline" in summary and "test" in summary["majority_baseline"]:
        stats.append((s.fmt(summary["majority_baseline"]["test"]), "test accuracy of the majority class"))
    if "train_seconds" in summary:
        stats.append((f"{summary['train_seconds']:.0f} s", f"training, {summary.get('steps', '–')} steps"))
    cells = "".join(f"<div class=stat><b>{esc(value)}</b><span>{esc(label)}</span></div>" for value, label in stats)
    return f"<div class=headline>{cells}</div>" if cells else ""


def results_section(summary: dict[str, Any]) -> str:
    body = table(["split", "metric", "before", "after"], s.before_after_rows(summary), "before-after", {2, 3})
    if not summary.get("before"):
        body += "<p class=note>No evaluation before training (eval.before: false).</p>"
    if "majority_baseline" in summary:
        body += "<p class=note>Majority-class baseline (accuracy): " + esc(", ".join(
            f"{k} {v:.4f}" for k, v in summary["majority_baseline"].items())) + "</p>"
    body += "".join(f"<p class=note>sacreBLEU: <code>{esc(sig)}</code></p>" for sig in s.signatures(summary))
    return section("results", "Before and after training", body)


def classes_section(summary: dict[str, Any], plots: dict[str, Path]) -> str:
    split = s.classifier_split(summary)
    if split is None:
        return ""
    n = summary["after"][split].get("n")
    body = (f"<p class=note>After training, on the {esc(split)} split ({esc(n)} examples). Support: how many examples "
            "of each class the split holds.</p>")
    body += table(["class", "precision", "recall", "F1", "support"], s.per_class_rows(summary), "per-class", {1, 2, 3, 4})
    names, matrix = s.confusion(summary)
    if "confusion" in plots:
        body += f'<img class=plot src="{data_uri(plots["confusion"])}" alt="confusion matrix">'
    if matrix and len(names) <= s.CONFUSION_TABLE_MAX:
        head = "".join(f"<th class=num>{esc(n)}</th>" for n in names)
        rows = "".join(f"<tr><th>{esc(name)}</th>" + "".join(
            f'<td{" class=diag" if i == j else ""}>{count}</td>' for j, count in enumerate(row)) + "</tr>"
                       for i, (name, row) in enumerate(zip(names, matrix)))
        body += ("<p class=note>Confusion matrix: rows are the true label, columns the predicted one.</p>"
                 f'<table id="confusion-matrix" class=confusion><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
                 f"<tbody>{rows}</tbody></table>")
    return section("classes", "Per class", body)


def examples_section(summary: dict[str, Any]) -> str:
    shown = s.examples(summary)
    if not shown:
        return ""
    split = s.classifier_split(summary)
    note = (f"<p class=note>From the {esc(split)} split after training: its first examples, then its most confident "
            "mistakes. Probability: what the model gave its predicted label.</p>")
    if all(str(e.get("input") or "").startswith("data:image/") for e in shown):
        figures = "".join(
            f'<figure class="{"right" if e["gold"] == e["predicted"] else "wrong"}"><img src="{esc(e["input"])}" '
            f'alt="example {esc(e["index"])}"><figcaption>gold <b>{esc(e["gold"])}</b><br>predicted '
            f'<b class={"ok" if e["gold"] == e["predicted"] else "ko"}>{esc(e["predicted"])}</b> ({e["probability"]:.2f})'
            "</figcaption></figure>" for e in shown)
        return section("examples", "Sample predictions", note + f'<div id="examples" class=grid>{figures}</div>')
    rows = "".join(
        f'<tr><td class={"ok" if e["gold"] == e["predicted"] else "ko"}>{"✓" if e["gold"] == e["predicted"] else "✗"}</td>'
        f'<td class=text>{esc(e.get("input") or "–")}</td><td>{esc(e["gold"])}</td><td>{esc(e["predicted"])}</td>'
        f'<td class=num>{e["probability"]:.3f}</td><td>{esc(e["kind"])}</td></tr>' for e in shown)
    return section("examples", "Sample predictions", note + '<table id="examples"><thead><tr><th></th><th>input</th>'
                   "<th>gold</th><th>predicted</th><th class=num>probability</th><th>shown as</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")


def generations_section(summary: dict[str, Any]) -> str:
    samples = s.generation_rows(summary)
    if not samples:
        return ""
    body = "<p class=note>Held-out prompts, answered by the model before and after training.</p>"
    for number, (split, fields) in enumerate(samples, start=1):
        cells = "".join(f"<tr><th>{esc(field)}</th><td class=text>{esc(text)}</td></tr>" for field, text in fields)
        body += f"<table class=generation><caption>{esc(split)} sample {number}</caption>{cells}</table>"
    return section("generations", "Generations", body)


def detectors_section(summary: dict[str, Any]) -> str:
    split, detectors, verdict = s.detector_rows(summary)
    if not detectors:
        return ""
    body = table(list(s.DETECTOR_COLUMNS), detectors, "detectors", set(range(1, len(s.DETECTOR_COLUMNS))))
    return section("anomaly", f"Anomaly detection ({split}; thresholds chosen on validation)",
                   body + f"<p>Verdict: {esc(verdict)}.</p>")


def synthetic_section(summary: dict[str, Any]) -> str:
    split, lines = synthetic_lines(summary)
    if not lines:
        return ""
    return section("synthetic", f"Synthetic data ({split})", "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul>")


def figures_section(figures: dict[str, Path]) -> str:
    """The figures the task drew (a GAN's sample grid, ...), embedded."""
    if not figures:
        return ""
    body = "".join(f'<figure><img class=plot src="{data_uri(path)}" alt="{esc(name)}"><figcaption class=note>'
                   f"{esc(name)}</figcaption></figure>" for name, path in figures.items())
    return section("figures", "Figures", body)


def drift_section(summary: dict[str, Any], plots: dict[str, Path]) -> str:
    facts = s.drift_facts(summary)
    if not facts:
        return ""
    body = ("<p class=note>Relative L2 change of the weights between the start of training and the final model: "
            "‖θ_after − θ_before‖ / ‖θ_after‖ per depth (0: embeddings or stem, then the blocks bottom to top, "
            "last: what follows them, the new head among it, measured from its random start). The trainable "
            "weights were copied when the model was built; frozen ones were kept as digests only (bounded memory), "
            "so they count as unchanged unless their bytes moved. Adapter weights count in their block.</p>")
    body += table(["", "value"], facts, "drift-facts", {1})
    if "drift" in plots:
        body += f'<img class=plot src="{data_uri(plots["drift"])}" alt="weight drift per block">'
    groups = s.drift_groups(summary)
    if groups:
        body += table(["depth", "relative change"], [[label, s.fmt(value)] for label, value in groups], "weight-drift", {1})
    return section("drift", "Weight drift per block", body)


def html_page(summary: dict[str, Any], plots: dict[str, Path], curve_note: str,
              figures: dict[str, Path] | None = None) -> str:
    """The whole page; ``plots`` maps loss/confusion/drift to the PNG files written for this report, ``figures``
    names the task's own (``sections.task_figures``)."""
    name = Path(summary["run"]).name
    parts = [
        results_section(summary),
        section("curves", "Training curves", f'<img class=plot src="{data_uri(plots["loss"])}" alt="loss curves">'
                                             f"<p class=note>{esc(curve_note)}</p>") if "loss" in plots else "",
        classes_section(summary, plots), examples_section(summary), generations_section(summary),
        figures_section(figures or {}),
        detectors_section(summary), synthetic_section(summary), drift_section(summary, plots),
        section("data", "Data", "<p class=note>Every row read is kept in a split or counted here by reason.</p>"
                + table(["rows", "count"], s.data_rows(summary), "data-counts", {1})) if s.data_rows(summary) else "",
        section("cost", "Cost", table(["", "value"], s.cost_rows(summary), "cost", {1})) if s.cost_rows(summary) else "",
    ]
    body = "".join(parts)
    titles = {"results": "results", "curves": "curves", "classes": "per class", "examples": "predictions",
              "generations": "generations", "figures": "figures", "anomaly": "anomaly", "synthetic": "synthetic data", "drift": "weight drift", "data": "data", "cost": "cost"}
    nav = "".join(f'<a href="#{ident}">{title}</a>' for ident, title in titles.items() if f'<section id="{ident}">' in body)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(name)} · tunelab report</title>'
            f"<style>{STYLE}</style></head><body><header><h1>Run {esc(name)}</h1><p class=meta>model "
            f"<b>{esc(summary['model'])}</b> · task <b>{esc(summary['task'])}</b> · strategy "
            f"<b>{esc(summary['strategy'])}</b></p><nav>{nav}</nav></header><main>{headline(summary)}{body}</main>"
            "<footer>Written by tunelab from this run's summary.json and metrics.jsonl. Self-contained: it loads "
            "nothing from the network.</footer></body></html>")
