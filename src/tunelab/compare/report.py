"""report.md and report.html of a comparison: the table, and everything a reader needs to judge its fairness.

The report says which split decided (validation) and which is only reported (test). The HTML page is the Markdown
rendered by markdown-it (which rich already depends on), so the two never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from tunelab.compare.presets import Invalid, Preset
from tunelab.compare.results import DECIDES, REPORTED, markdown_table
from tunelab.compare.runner import Plan, RunResult
from tunelab.evaluate.memory import format_bytes
from tunelab.io import atomic_write_text


def same_data(results: list[RunResult]) -> tuple[dict[str, str] | None, list[str]]:
    """The split fingerprint shared by every finished run, and the runs whose data differed (should be none)."""
    prints = {f"{r.variant}-seed{r.seed}": (r.summary or {}).get("data", {}).get("fingerprint") for r in results if r.summary}
    prints = {name: fp for name, fp in prints.items() if fp}
    if not prints:
        return None, []
    first = next(iter(prints.values()))
    return first, [name for name, fp in prints.items() if fp != first]


def _machine_line(machine: dict[str, Any]) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    return (f"{machine['cpu']}, {machine['logical_cores']} logical / {machine['physical_cores']} physical cores, "
            f"{format_bytes(machine['ram_bytes'])} RAM{gpu}; Python {machine['python']}, torch {machine['torch']}, "
            f"transformers {machine['transformers']}, peft {machine['peft']}")


def markdown(plan: Plan, rows: list[dict[str, Any]], results: list[RunResult], meta: dict[str, Any],
             plots: dict[str, str]) -> str:
    """The whole report as Markdown."""
    recipe, metric = meta["recipe"], meta["metric"]
    fingerprint, differing = same_data(results)
    data_line = ("every finished run trained and was evaluated on the same examples: split fingerprints "
                 + ", ".join(f"{k} `{v}`" for k, v in fingerprint.items()) if fingerprint else "no run finished")
    if differing:
        data_line = f"**the data differed** in {', '.join(differing)} (compare their summary.json data.fingerprint)"
    machine = meta["machine"]
    lines = [
        f"# Comparison {plan.folder.name}", "",
        f"Recipe `{plan.recipe_path}`: model **{recipe['model']}**, task **{recipe['task']}**, data **{recipe['data']}** "
        f"({meta['rows']}). Compared: **{metric}** of the checkpoint each run chose on validation. "
        f"**Decided on {DECIDES}**: the rank and the Pareto front use the {DECIDES} figures only; the {REPORTED} "
        f"figures stand beside them, reported only, and chose nothing (no variant, checkpoint or front).", "",
        "## Fairness", "",
        f"- Data: {data_line}. The split is fixed by the recipe seed ({recipe['seed']}); `--seeds` vary only "
        "`train.seed` (head initialisation, dropout, batch order).",
        f"- Budget: {plan.budget.describe()}; batch size {recipe['batch_size']}.",
        f"- Seeds: {', '.join(map(str, plan.seeds))}. Shared overrides: {', '.join(plan.overrides) or 'none'}.",
        f"- Machine: {_machine_line(machine)}. Load average (1 min) {machine['load_average_1m']} when this invocation "
        f"started and {meta['load_average_end']} when it ended{_reused(results)}: timings on a busy machine are slower for every variant alike only "
        "if the load stayed level, so variants ran round by round (every variant at the first seed, then at the next).",
        f"- Speed settings of the runs: {_speed_line(results)}.",
        "- Each variant ran in its own process, so its peak memory is its own.", "",
        "## Learning rate per variant", "",
        "| variant | strategy | lr | why this rate |", "|---|---|---|---|",
        *[_variant_line(v) for v in plan.variants], "",
        "## Results", "",
        markdown_table(rows, metric), "",
        f"- **rank ({DECIDES})**: 1 is the best {DECIDES} mean ({_direction(meta)}); equal means share a rank. "
        f"**{metric}**: mean over the seeds that finished, ± the sample standard deviation, (number of seeds), on "
        f"{DECIDES} (which decides) and on {REPORTED} (an estimate on unseen data, never used to choose). "
        "**before**: the same model with its new head, before any training (the zero-shot figure; a fresh random "
        "head scores near chance).",
        *_baseline(results),
        "- **trainable / share**: parameters the optimiser updates when training starts (gradual unfreezing starts "
        "with the head and adds blocks later).",
        f"- **{rows_memory(rows)}**: measured, the high-water mark of the whole training process (on CPU it includes "
        "Python, torch, the tokenizer and the data). **RSS added in training**: the peak during the training loop "
        "minus the resident memory when it started, sampled every 20 ms: the part the strategy changes.",
        "- **one-off s**: work done once before the first step (building the frozen-prefix or feature cache); "
        "**s/step** and **examples/s**: the steady cost of the optimiser steps, without it (a '?' one-off is a cache "
        "build that was tried and turned off: its time is unknown and stays in that row's per-step figures); "
        "**train s**: both together. Evaluation is excluded from all of them. **weight drift**: "
        "‖θ_after − θ_before‖ / ‖θ_after‖ over every parameter the trained model holds, the new head and any adapter "
        "included (so it is not zero for feature extraction). **Pareto (memory)** ★: no other variant "
        f"uses less memory and scores better on {DECIDES}.", "",
    ]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["## Failed variants", ""]
        lines += [f"- **{r.variant}** (seed {r.seed}): {_one_block(r.error)}" for r in failed]
        lines.append("")
    lines += ["## Figures", ""]
    for caption, path in plots.items():
        lines += [f"### {caption[0].upper()}{caption[1:]}", "", f"![{caption}]({path})", ""]
    return "\n".join(lines)


def _baseline(results: list[RunResult]) -> list[str]:
    """The majority-class score on each split, so a figure equal to it reads as 'learnt nothing yet'."""
    baseline = next((r.summary["majority_baseline"] for r in results if r.summary and "majority_baseline" in r.summary), None)
    shown = [f"{split} {baseline[split]:.4f}" for split in (DECIDES, REPORTED) if baseline and split in baseline]
    if not shown:
        return []
    return [f"- **Majority-class baseline**: {', '.join(shown)} (always predicting the most frequent label)."]


def _direction(meta: dict[str, Any]) -> str:
    return "lowest, as the recipe minimises it" if meta.get("mode") == "min" else "highest"


def _reused(results: list[RunResult]) -> str:
    """A note when some runs were measured by an earlier invocation (a resumed comparison)."""
    earlier = sum(r.status == "finished-before" for r in results)
    return f" ({earlier} of the {len(results)} runs finished in an earlier invocation and were reused)" if earlier else ""


def _speed_line(results: list[RunResult]) -> str:
    """The runs' own record of threads, allocator, caches and compilation: shared settings once, the rest per variant."""
    done = [(r.variant, (r.summary or {}).get("speedups", {})) for r in results if r.summary]
    if not done:
        return "no run finished"
    keys = list(dict.fromkeys(k for _, speedups in done for k in speedups))
    parts = []
    for key in keys:
        values = {variant: speedups.get(key) for variant, speedups in done}
        if len(set(values.values())) == 1:
            parts.append(f"{key}: {next(iter(values.values()))}")
        else:
            parts += [f"{variant} {key}: {value}" for variant, value in values.items() if value is not None]
    return "; ".join(parts) or "defaults"


def rows_memory(rows: list[dict[str, Any]]) -> str:
    """What the memory column measured: peak CUDA allocation on a GPU, else the process's peak RSS."""
    return next((r["memory_kind"] for r in rows if "memory_kind" in r), "peak memory")


def _variant_line(variant: Preset | Invalid) -> str:
    if isinstance(variant, Invalid):
        return f"| {variant.name} | (invalid) | – | {_one_block(str(variant))} |"
    strategy = ", ".join(f"{k}: {v}" for k, v in variant.strategy.items())
    extra = f"; also {', '.join(variant.overrides)}" if variant.overrides else ""
    return f"| {variant.name} | {strategy} | {variant.lr:g} | {variant.why}{extra} |"


def _one_block(text: str | None) -> str:
    """An error message on one Markdown line (multi-line recipe errors keep their parts)."""
    return " ".join((text or "unknown error").split()).replace("|", "\\|")


def write_report(plan: Plan, rows: list[dict[str, Any]], results: list[RunResult], meta: dict[str, Any],
                 plots: dict[str, str]) -> Path:
    """Write report.md and report.html into the comparison folder; returns the Markdown path."""
    text = markdown(plan, rows, results, meta, plots)
    atomic_write_text(plan.folder / "report.md", text)
    body = MarkdownIt("commonmark").enable("table").render(text)
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Comparison "
            f"{plan.folder.name}</title><style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}table{border-collapse:collapse}"
            f"img{{max-width:100%}}</style></head><body>{body}</body></html>")
    atomic_write_text(plan.folder / "report.html", page)
    return plan.folder / "report.md"
