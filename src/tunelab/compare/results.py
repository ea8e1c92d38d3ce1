"""From run summaries to one row per variant: the metric's mean and spread over seeds, and what it cost.

The metric is the recipe's ``eval.metric`` on the test split (validation if there is none) of the best checkpoint,
which the run chose on validation, so the figure compared was never used to pick anything.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

from tunelab.compare.runner import RunResult
from tunelab.evaluate.memory import format_bytes
from tunelab.io import atomic_write_text

_SIZE_COLUMNS = ("peak_memory_bytes", "train_rss_added_bytes")


def metric_split(summary: dict[str, Any]) -> str:
    """The split whose metric is compared: test when the run has one."""
    return "test" if "test" in summary.get("after", {}) else "validation"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def aggregate(results: list[RunResult], metric: str) -> list[dict[str, Any]]:
    """One row per variant (in plan order) with means over its successful seeds and the errors of the others."""
    order = list(dict.fromkeys(r.variant for r in results))
    rows = []
    for variant in order:
        runs = [r for r in results if r.variant == variant]
        ok = [r.summary for r in runs if r.summary is not None]
        row: dict[str, Any] = {
            "variant": variant, "lr": runs[0].lr, "seeds": [r.seed for r in runs],
            "seeds_ok": len(ok), "errors": {r.seed: r.error for r in runs if r.error},
            "status": "ok" if len(ok) == len(runs) else ("failed" if not ok else f"{len(ok)}/{len(runs)} seeds"),
        }
        if ok:
            row.update(_measures(ok, metric))
        rows.append(row)
    _mark_front(rows)
    return rows


def _measures(summaries: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Means (and the metric's spread) of what the successful runs of one variant measured."""
    split = metric_split(summaries[0])
    scores = [float(s["after"][split][metric]) for s in summaries if metric in s["after"].get(split, {})]
    before = [float(s["before"][split][metric]) for s in summaries if metric in s.get("before", {}).get(split, {})]
    cuda = [s["peak_cuda_bytes"] for s in summaries if "peak_cuda_bytes" in s]
    first = summaries[0]
    return {
        "method": first["strategy"], "split": split,
        "head_lr": first.get("learning_rates", {}).get("head_lr"),
        "metric_values": scores, "metric_mean": _mean(scores),
        "metric_sd": statistics.stdev(scores) if len(scores) > 1 else None,
        "before_mean": _mean(before),
        "trainable": first["parameters"]["trainable"], "total": first["parameters"]["total"],
        "trainable_share": first["parameters"]["trainable_share"],
        "memory_kind": "peak CUDA allocated" if cuda else "peak RSS of the process",
        "peak_memory_bytes": int(_mean(cuda or [s["peak_rss_bytes"] for s in summaries])),
        "train_rss_added_bytes": _optional_int(_mean([s["train_peak_rss_bytes"] - s["rss_before_train_bytes"]
                                                      for s in summaries if "train_peak_rss_bytes" in s])),
        "steps": _mean([s["steps"] for s in summaries]),
        "seconds_per_step": _mean([s["train_seconds"] / s["steps"] for s in summaries if s["steps"]]),
        "examples_per_second": _mean([s["examples_per_second"] for s in summaries]),
        "train_seconds": _mean([s["train_seconds"] for s in summaries]),
        "wall_seconds": _mean([s["wall_seconds"] for s in summaries]),
        "weight_drift": _mean([s["weight_drift"]["overall"] for s in summaries if "weight_drift" in s]),
        "fingerprint": first["data"].get("fingerprint"),
    }


def _optional_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def pareto_front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of the (cost, score) points no other point beats: no cheaper-or-equal one scores higher-or-equal."""
    front = set()
    for i, (cost, score) in enumerate(points):
        beaten = any(c <= cost and s >= score and (c, s) != (cost, score) for c, s in points)
        if not beaten:
            front.add(i)
    return front


def _mark_front(rows: list[dict[str, Any]]) -> None:
    """Flag the variants on the memory/metric Pareto front."""
    scored = [r for r in rows if r.get("metric_mean") is not None]
    front = pareto_front([(r["peak_memory_bytes"], r["metric_mean"]) for r in scored])
    for i, row in enumerate(scored):
        row["pareto_memory"] = i in front


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _rates(row: dict[str, Any]) -> str:
    """train.lr, and the new head's rate when it differs (feature extraction and PEFT train the head at 3e-2)."""
    lr, head = row["lr"], row.get("head_lr")
    return _num(lr, ".1e") + (f" ({head:.1e})" if head is not None and head != lr else "")


def table_rows(rows: list[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table, shared by the terminal, Markdown and HTML."""
    split = next((r["split"] for r in rows if "split" in r), "test")
    memory = next((r["memory_kind"] for r in rows if "memory_kind" in r), "peak memory")
    header = ["variant", "lr (head)", f"{split} {metric} (mean ± sd, n)", "before", "trainable", "share", memory,
              "RSS added in training", "s/step", "examples/s", "train s", "steps", "weight drift", "Pareto (memory)"]
    cells = []
    for r in rows:
        if r["seeds_ok"] == 0:
            cells.append([r["variant"], _rates(r), "FAILED", *["–"] * (len(header) - 3)])
            continue
        sd = f" ± {r['metric_sd']:.4f}" if r["metric_sd"] is not None else ""
        score = f"{r['metric_mean']:.4f}{sd} ({len(r['metric_values'])})" if r["metric_mean"] is not None else "–"
        if r["status"] != "ok":
            score += f" [{r['status']}]"
        cells.append([
            r["variant"], _rates(r), score, _num(r["before_mean"], ".4f"), f"{r['trainable']:,}",
            f"{r['trainable_share']:.2%}", format_bytes(r["peak_memory_bytes"]),
            format_bytes(r["train_rss_added_bytes"]) if r["train_rss_added_bytes"] is not None else "–",
            _num(r["seconds_per_step"], ".3f"), _num(r["examples_per_second"], ".1f"), _num(r["train_seconds"], ".1f"),
            _num(r["steps"], ".0f"), _num(r["weight_drift"], ".4f"), "★" if r.get("pareto_memory") else "",
        ])
    return header, cells


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The comparison as a Markdown table (printed in the terminal and written to report.md)."""
    header, cells = table_rows(rows, metric)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def write_results(folder: Path, rows: list[dict[str, Any]], results: list[RunResult], meta: dict[str, Any]) -> None:
    """results.json (plan, machine, per-variant rows and per-run records) and results.csv (one line per variant)."""
    runs = [{"variant": r.variant, "seed": r.seed, "status": r.status, "run_dir": str(r.run_dir) if r.run_dir else None,
             "lr": r.lr, "error": r.error} for r in results]
    atomic_write_text(folder / "results.json", json.dumps({**meta, "variants": rows, "runs": runs}, indent=2, default=str))
    columns = ["variant", "status", "lr", "head_lr", "method", "split", "metric_mean", "metric_sd", "metric_values", "before_mean",
               "trainable", "total", "trainable_share", "memory_kind", *_SIZE_COLUMNS, "seconds_per_step",
               "examples_per_second", "train_seconds", "wall_seconds", "steps", "weight_drift", "pareto_memory", "errors"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "metric_values": " ".join(f"{v:.6f}" for v in row.get("metric_values", [])),
                         "errors": " | ".join(f"seed {k}: {v}" for k, v in row["errors"].items())})
    atomic_write_text(folder / "results.csv", buffer.getvalue())
