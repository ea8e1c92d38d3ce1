"""From run summaries to one row per variant: the metric's mean and spread over seeds, and what it cost.

Choose on validation, report on test: the rank and the Pareto front come from the validation figures of each run's
best checkpoint (which the run also chose on validation); the test figures sit beside them and choose nothing, so
they stay an honest estimate of how the chosen variant does on unseen data.

Costs separate one-off work (building the frozen-prefix or feature cache before the first step) from the steady
per-step cost: the cache makes each step far cheaper, and folding its build into s/step hid exactly that.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path
from typing import Any, Literal

from tunelab.compare.runner import RunResult
from tunelab.evaluate.memory import format_bytes
from tunelab.io import atomic_write_text

DECIDES = "validation"  # the split that ranks the variants and draws the Pareto front
REPORTED = "test"  # shown beside it; never used to choose
Mode = Literal["max", "min"]

_SIZE_COLUMNS = ("peak_memory_bytes", "train_rss_added_bytes")
_BUILT = re.compile(r"built in (\d+(?:\.\d+)?) s")  # the cache's own note in summary.json speedups


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _scores(summaries: list[dict[str, Any]], where: str, split: str, metric: str) -> list[float]:
    """The metric on one split, ``where`` = after (the chosen checkpoint) or before (untrained), of each run having it."""
    return [float(s[where][split][metric]) for s in summaries if metric in s.get(where, {}).get(split, {})]


def one_off_seconds(summary: dict[str, Any]) -> float | None:
    """Seconds of one-off work counted inside ``train_seconds`` (cache builds); None when unknown.

    Read from ``one_off_seconds`` when the run recorded it; runs that did not are read from their cache notes
    ("... built in 12.3 s"). A cache note without that figure (a build that was tried, then turned off) cost an
    unknown time, so the answer is None and the per-step figures of that run still include it.
    """
    if summary.get("one_off_seconds") is not None:
        return float(summary["one_off_seconds"])
    total = 0.0
    for key, note in summary.get("speedups", {}).items():
        if not key.endswith("_cache"):
            continue
        found = _BUILT.search(str(note))
        if not found:
            return None
        total += float(found.group(1))
    return total


def _steady(summary: dict[str, Any]) -> tuple[float | None, float | None]:
    """Seconds per optimiser step and examples per second without the one-off work (with it, if its length is unknown)."""
    steps, seconds = summary["steps"], summary["train_seconds"]
    examples = summary["examples_per_second"] * seconds  # the summary records the rate over train_seconds
    steady = seconds - (one_off_seconds(summary) or 0.0)
    if steady <= 0:
        return None, None
    return (steady / steps if steps else None), examples / steady


def aggregate(results: list[RunResult], metric: str, mode: Mode = "max") -> list[dict[str, Any]]:
    """One row per variant (in plan order) with means over its successful seeds and the errors of the others,
    ranked (1 = best) and marked on the Pareto front by the validation metric alone."""
    order = list(dict.fromkeys(r.variant for r in results))
    rows = []
    for variant in order:
        runs = [r for r in results if r.variant == variant]
        ok = [r.summary for r in runs if r.summary is not None]
        row: dict[str, Any] = {
            "variant": variant, "lr": runs[0].lr, "seeds": [r.seed for r in runs],
            "seeds_ok": len(ok), "errors": {r.seed: r.error for r in runs if r.error},
            "status": "ok" if len(ok) == len(runs) else ("failed" if not ok else f"{len(ok)}/{len(runs)} seeds"),
            "decided_by": DECIDES, "rank": None,
        }
        if ok:
            row.update(_measures(ok, metric))
        rows.append(row)
    _rank(rows, mode)
    _mark_front(rows, mode)
    return rows


def _spread(prefix: str, values: list[float]) -> dict[str, Any]:
    return {f"{prefix}_values": values, f"{prefix}_mean": _mean(values),
            f"{prefix}_sd": statistics.stdev(values) if len(values) > 1 else None}


def _measures(summaries: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Means (and the metric's spread) of what the successful runs of one variant measured."""
    before_split = REPORTED if any(REPORTED in s.get("after", {}) for s in summaries) else DECIDES
    cuda = [s["peak_cuda_bytes"] for s in summaries if "peak_cuda_bytes" in s]
    steady = [_steady(s) for s in summaries]
    one_off = [one_off_seconds(s) for s in summaries]
    first = summaries[0]
    return {
        "method": first["strategy"], "head_lr": first.get("learning_rates", {}).get("head_lr"),
        **_spread(DECIDES, _scores(summaries, "after", DECIDES, metric)),
        **_spread(REPORTED, _scores(summaries, "after", REPORTED, metric)),
        "before_split": before_split, "before_mean": _mean(_scores(summaries, "before", before_split, metric)),
        "trainable": first["parameters"]["trainable"], "total": first["parameters"]["total"],
        "trainable_share": first["parameters"]["trainable_share"],
        "memory_kind": "peak CUDA allocated" if cuda else "peak RSS of the process",
        "peak_memory_bytes": int(_mean(cuda or [s["peak_rss_bytes"] for s in summaries])),
        "train_rss_added_bytes": _optional_int(_mean([s["train_peak_rss_bytes"] - s["rss_before_train_bytes"]
                                                      for s in summaries if "train_peak_rss_bytes" in s])),
        "steps": _mean([s["steps"] for s in summaries]),
        "one_off_seconds": None if None in one_off else _mean([float(v) for v in one_off if v is not None]),
        "seconds_per_step": _mean([per_step for per_step, _ in steady if per_step is not None]),
        "examples_per_second": _mean([rate for _, rate in steady if rate is not None]),
        "train_seconds": _mean([s["train_seconds"] for s in summaries]),
        "wall_seconds": _mean([s["wall_seconds"] for s in summaries]),
        "weight_drift": _mean([s["weight_drift"]["overall"] for s in summaries if "weight_drift" in s]),
        "fingerprint": first["data"].get("fingerprint"),
    }


def _optional_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _goodness(score: float, mode: Mode) -> float:
    """A score where higher is better whatever the metric (accuracy is maximised, loss minimised)."""
    return score if mode == "max" else -score


def _rank(rows: list[dict[str, Any]], mode: Mode) -> None:
    """Rank by the validation mean: 1 is best, ties share a rank, variants without a validation figure get none."""
    scored = [r for r in rows if r.get(f"{DECIDES}_mean") is not None]
    for row in scored:
        mine = _goodness(row[f"{DECIDES}_mean"], mode)
        row["rank"] = 1 + sum(_goodness(other[f"{DECIDES}_mean"], mode) > mine for other in scored)


def pareto_front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of the (cost, score) points no other point beats: no cheaper-or-equal one scores higher-or-equal."""
    front = set()
    for i, (cost, score) in enumerate(points):
        beaten = any(c <= cost and s >= score and (c, s) != (cost, score) for c, s in points)
        if not beaten:
            front.add(i)
    return front


def _mark_front(rows: list[dict[str, Any]], mode: Mode) -> None:
    """Flag the variants on the memory/validation-metric Pareto front."""
    scored = [r for r in rows if r.get(f"{DECIDES}_mean") is not None]
    front = pareto_front([(r["peak_memory_bytes"], _goodness(r[f"{DECIDES}_mean"], mode)) for r in scored])
    for i, row in enumerate(scored):
        row["pareto_memory"] = i in front


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _rates(row: dict[str, Any]) -> str:
    """train.lr, and the new head's rate when it differs (feature extraction and PEFT have their own head rate)."""
    lr, head = row["lr"], row.get("head_lr")
    return _num(lr, ".1e") + (f" ({head:.1e})" if head is not None and head != lr else "")


def _score(row: dict[str, Any], split: str) -> str:
    """Mean ± sd (number of seeds) of the metric on one split."""
    mean, sd, values = row.get(f"{split}_mean"), row.get(f"{split}_sd"), row.get(f"{split}_values", [])
    if mean is None:
        return "–"
    return f"{mean:.4f}{f' ± {sd:.4f}' if sd is not None else ''} ({len(values)})"


def table_rows(rows: list[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table, shared by the terminal, Markdown and HTML."""
    before = next((r["before_split"] for r in rows if "before_split" in r), REPORTED)
    memory = next((r["memory_kind"] for r in rows if "memory_kind" in r), "peak memory")
    header = ["variant", "lr (head)", f"rank ({DECIDES})", f"{DECIDES} {metric}: decides (mean ± sd, n)",
              f"{REPORTED} {metric}: reported only", f"before ({before})", "trainable", "share", memory,
              "RSS added in training", "one-off s", "s/step", "examples/s", "train s", "steps", "weight drift",
              "Pareto (memory)"]
    cells = []
    for r in rows:
        if r["seeds_ok"] == 0:
            cells.append([r["variant"], _rates(r), "–", "FAILED", *["–"] * (len(header) - 4)])
            continue
        status = f" [{r['status']}]" if r["status"] != "ok" else ""
        cells.append([
            r["variant"], _rates(r), _num(r["rank"], "d"), _score(r, DECIDES) + status, _score(r, REPORTED),
            _num(r["before_mean"], ".4f"), f"{r['trainable']:,}", f"{r['trainable_share']:.2%}",
            format_bytes(r["peak_memory_bytes"]),
            format_bytes(r["train_rss_added_bytes"]) if r["train_rss_added_bytes"] is not None else "–",
            "?" if r["one_off_seconds"] is None else f"{r['one_off_seconds']:.1f}",
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
    columns = ["variant", "status", "rank", "decided_by", "lr", "head_lr", "method",
               *[f"{split}_{part}" for split in (DECIDES, REPORTED) for part in ("mean", "sd", "values")],
               "before_split", "before_mean", "trainable", "total", "trainable_share", "memory_kind", *_SIZE_COLUMNS,
               "one_off_seconds", "seconds_per_step", "examples_per_second", "train_seconds", "wall_seconds", "steps",
               "weight_drift", "pareto_memory", "errors"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        values = {f"{split}_values": " ".join(f"{v:.6f}" for v in row.get(f"{split}_values", []))
                  for split in (DECIDES, REPORTED)}
        writer.writerow({**row, **values, "errors": " | ".join(f"seed {k}: {v}" for k, v in row["errors"].items())})
    atomic_write_text(folder / "results.csv", buffer.getvalue())
