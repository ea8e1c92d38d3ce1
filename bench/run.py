"""tunelab against the plain transformers Trainer on the same work: one command, every side, one table.

    .venv/bin/python bench/run.py                      # every scenario (about 35-40 min on 2 idle cores)
    .venv/bin/python bench/run.py --only full,lora     # some of them
    .venv/bin/python bench/run.py --train-rows 256 --causal-steps 4 --no-save   # a quick smoke run

Each side of each scenario runs in its own process (so peak RSS is its own): tunelab, then the Trainer script as a
typical user writes it, then the same script tuned (length-grouped batches, threads, workers; not for the image
scenarios, whose images all have one size). The generation scenario (``--only generation``) generates for the same
prompts through tunelab and through PeftModel + generate; the scaling sweep (``--only scaling``, scaling.py) records
how examples/s and peak RSS grow as training rows and sequence length double, with plots.
A float32 matmul measured at the start and the end gives the machine's practical ceiling for the MFU column.
Results are printed and written to bench/results/<date>.md with the machine description.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import generation_side
import scaling
import scaling_report
from common import (
    BENCH,
    Result,
    load_average,
    matmul_gflops,
    run_script,
    scenarios,
    write_causal_data,
    write_classification_data,
    write_generation_data,
    write_image_data,
    write_model_folders,
)

TARGETS = {"full": 1.2, "lora": 1.2, "freeze": 3.0, "feature_extraction": 10.0, "causal_lora": 1.2}
IMAGE_SCENARIOS = {"image", "image_fe"}  # no tuned side: every image has one size, and threads are the default's


# each side: (script, extra arguments, result file suffix)
SIDES = {"tunelab": ("tunelab_side.py", [], "tunelab"), "trainer": ("trainer_baseline.py", [], "trainer"),
         "tuned": ("trainer_baseline.py", ["--tuned"], "trainer-tuned")}


def run_side(side: str, scenario: str, work: Path, args: argparse.Namespace) -> Result:
    """One side of one scenario in a fresh process; its log goes to the work folder."""
    script, extra, suffix = SIDES[side]
    if side == "tuned":
        extra = [*extra, "--workers", str(args.tuned_workers)]
    arguments = [scenario, "--work", str(work), "--train-rows", str(args.train_rows),
                 "--causal-steps", str(args.causal_steps), *extra]
    return run_script(script, arguments, work / f"{scenario}-{suffix}.log", work / f"{scenario}-{suffix}.json")


def best(results: list[Result]) -> Result:
    """The fastest of a side's repeats (as timeit does: slower ones met more interference), with every time noted."""
    fastest = min(results, key=lambda r: r.seconds)
    if len(results) > 1:
        fastest.settings["repeat_seconds"] = [round(r.seconds, 1) for r in results]
    return fastest


def machine() -> str:
    """CPU model, cores, memory and library versions: what the numbers were measured on."""
    import psutil
    import torch
    import transformers

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import peft

    return (f"{cpu}, {psutil.cpu_count(logical=False)} physical / {psutil.cpu_count()} logical cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; Python {platform.python_version()}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def speed(t: Result, h: Result) -> float:
    return (t.examples / t.seconds) / (h.examples / h.seconds)


def row(title: str, t: Result, h: Result, g: Result | None, peak: float) -> list[str]:
    """One table row: tunelab / default Trainer script / tuned Trainer script, and tunelab's ratios to each; '-'
    where a scenario has no tuned side (images) or no tokens (images)."""
    mib = 2**20
    mfu = lambda r: 100 * r.flops / r.seconds / (peak * 1e9)  # noqa: E731

    def three(f: object, fmt: str) -> str:
        return " / ".join("-" if r is None else format(f(r), fmt) for r in (t, h, g))  # type: ignore[operator]

    cpu = lambda r: (t.examples / t.cpu_seconds) / (r.examples / r.cpu_seconds)  # noqa: E731
    tokens = t.padded_tokens > 0
    return [
        title,
        three(lambda r: r.examples / r.seconds, ".1f"),
        f"**{speed(t, h):.2f}x**",
        f"**{speed(t, g):.2f}x**" if g else "-",
        f"{cpu(h):.2f}x / " + (f"{cpu(g):.2f}x" if g else "-"),
        three(lambda r: r.tokens / r.seconds, ".0f") if tokens else "- (images)",
        three(lambda r: r.tokens / r.padded_tokens, ".0%") if tokens else "-",
        three(lambda r: r.peak_rss_bytes / mib, ".0f") + " MiB" + (
            f" ({t.peak_rss_bytes / g.peak_rss_bytes:.2f}x tuned)" if g else f" ({t.peak_rss_bytes / h.peak_rss_bytes:.2f}x)"),
        three(lambda r: r.metric, ".4f") + f" ({t.metric_name})",
        three(mfu, ".1f") + " %",
        three(lambda r: r.seconds, ".0f") + " s",
    ]


HEADER = ["scenario", "examples/s (tunelab / Trainer / tuned Trainer)", "speed-up vs Trainer",
          "speed-up vs tuned Trainer", "per CPU-second (vs Trainer / vs tuned)", "tokens/s", "real tokens in batches",
          "peak RSS", "final validation metric", "MFU", "training call"]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report(results: dict[str, tuple[Result, Result, Result | None]], specs: dict, peaks: list[float],
           loads: list[str], args: argparse.Namespace, started: datetime.datetime, generation: dict | None = None,
           scaling_lines: list[str] | None = None) -> str:
    peak = max(peaks)
    rows = [row(specs[name].title, t, h, g, peak) for name, (t, h, g) in results.items()]
    verdicts = []
    for name, (t, h, g) in results.items():
        target = TARGETS.get(name)
        if target is None:  # the image scenarios have no target in issue #16
            continue
        parts = []
        for label, other in (("the Trainer", h), ("the tuned Trainer", g)):
            ratio = speed(t, other)
            memory = "peak RSS lower" if t.peak_rss_bytes <= other.peak_rss_bytes else "peak RSS HIGHER"
            parts.append(f"{ratio:.2f}x {label} ({'met' if ratio >= target else 'NOT met'}; {memory})")
        verdicts.append(f"- {name}, target {target}x: " + ", ".join(parts))
    settings = []
    for name, (t, h, g) in results.items():
        tuned = "" if g is None else f"; tuned Trainer {json.dumps(g.settings)}"
        tuned_load = "" if g is None else f", tuned Trainer {g.load_before} / {g.load_after}"
        settings.append(f"- {name}: tunelab {json.dumps(t.settings)}; Trainer {json.dumps(h.settings)}{tuned}; load "
                        f"average before/after tunelab {t.load_before} / {t.load_after}, Trainer {h.load_before} / "
                        f"{h.load_after}{tuned_load}")
        settings += [f"  - {note}" for note in specs[name].notes]
    return "\n".join([
        f"# Bench {started:%Y-%m-%d %H:%M}",
        "",
        f"Machine: {machine()}.",
        f"Load average (1, 5, 15 min) at start: {loads[0]}; at end: {loads[1]}. The bench's own compute threads "
        "count in it; a load above their number means other work shared these cores and wall-clock ratios carry "
        "noise (the per-CPU-second column divides by each process's own CPU time instead).",
        f"float32 matmul ({args.matmul_size}x{args.matmul_size}) at start / end: "
        f"{peaks[0]:.1f} / {peaks[1]:.1f} GFLOP/s; MFU divides by the higher.",
        f"Data: Rotten Tomatoes subset, {args.train_rows} train / {args.validation_rows} validation rows; "
        f"causal LM: tech-support chats, {args.causal_train_rows} train / {args.causal_validation_rows} validation; "
        f"images: scikit-learn digits, {args.image_train_rows} train / {args.image_validation_rows} validation.",
        f"Command: `{' '.join(['python', *sys.argv])}`" + (
            f"; each side ran {args.repeat} times (A B B A ...) and its fastest run counts (all times under Settings)"
            if args.repeat > 1 else ""),
        "",
        table(rows),
        "",
        "Columns: examples/s = training examples processed / wall time of the training call (tunelab `Trainer.fit`, "
        "the Trainer's `trainer.train()`; both include the same validation passes, tunelab also its checkpoints and "
        "cache building). Tokens are real (non-padding) tokens. 'real tokens in batches' = real / padded tokens of "
        "the training batches. MFU = useful FLOPs of the window (forward 2N, input gradients 2N, weight gradients 2N "
        "per token and block actually run; embeddings excluded) / seconds / the matmul rate. Final metric: the last "
        "validation pass of the training call (accuracy; for the causal LM, loss per answer token).",
        "",
        *([] if generation is None else [
            "## Generation",
            "",
            f"SmolLM2-135M-Instruct with a LoRA adapter ({generation['adapter']}), greedy, at most "
            f"{generation['tunelab']['max_new_tokens']} new tokens, stop at a line break: Spanish translations of the first "
            f"{generation['tunelab']['prompts']} held-out test verses of bible-en-es through the chat template.",
            "",
            generation_side.table(generation),
            "",
        ]),
        *(scaling_lines or []),
        "## Targets",
        *verdicts,
        "",
        "## Settings",
        *settings,
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--validation-rows", type=int, default=400)
    parser.add_argument("--causal-train-rows", type=int, default=256)
    parser.add_argument("--causal-validation-rows", type=int, default=48)
    parser.add_argument("--causal-steps", type=int, default=16)
    parser.add_argument("--tuned-workers", type=int, default=0, help="the tuned Trainer's dataloader workers")
    parser.add_argument("--generation-prompts", type=int, default=200, help="generation scenario: test verses")
    parser.add_argument("--tunelab-batch", type=int, default=64, help="generation: tunelab's batch (the recipe's eval)")
    parser.add_argument("--user-batch", type=int, default=16, help="generation: the user script's batch")
    parser.add_argument("--max-new-tokens", type=int, default=generation_side.MAX_NEW_TOKENS, help="generation")
    parser.add_argument("--adapter", type=Path, help="generation: a trained LoRA folder (default: a seeded random one)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--work", type=Path, help="keep data, runs, logs and per-side results here (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side (even: A B B A order); the fastest counts")
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing under bench/results")
    parser.add_argument("--image-train-rows", type=int, default=800, help="image scenarios: training digits")
    parser.add_argument("--image-validation-rows", type=int, default=300, help="image scenarios: validation digits")
    scaling.add_arguments(parser)
    args = parser.parse_args()
    specs = scenarios(args.train_rows, args.causal_steps)
    chosen = [n for n in (args.only.split(",") if args.only else [*specs, "generation", "scaling"]) if n]
    unknown = [n for n in chosen if n not in specs and n not in ("generation", "scaling")]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join([*specs, 'generation', 'scaling'])}")
    started = datetime.datetime.now()
    loads = [load_average()]
    peaks = [matmul_gflops(args.matmul_size)]
    results: dict[str, tuple[Result, Result, Result | None]] = {}
    scaling_lines: list[str] = []
    say = lambda text: print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        write_classification_data(work, args.train_rows, args.validation_rows)
        if "causal_lora" in chosen:
            write_causal_data(work, args.causal_train_rows, args.causal_validation_rows)
        if IMAGE_SCENARIOS & set(chosen):
            write_image_data(work, args.image_train_rows, args.image_validation_rows)
        write_model_folders(work, {specs[name].model for name in chosen if name in specs} | (
            {generation_side.CAUSAL_MODEL} if "generation" in chosen else set()) | (
            scaling.trainer_models(args) if "scaling" in chosen else set()))
        generation = None
        if "generation" in chosen:
            write_generation_data(work, args.generation_prompts, args.adapter)
            print(f"[{datetime.datetime.now():%H:%M:%S}] generation: tunelab, then user ...", flush=True)
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
            generation = generation_side.run_both(work, args.tunelab_batch, args.user_batch, args.max_new_tokens,
                                                  sys.executable, env)
            generation["adapter"] = str(args.adapter) if args.adapter else "seeded random r=16, all projections"
            print(generation_side.table(generation), flush=True)
        for name in [n for n in chosen if n in specs]:
            sides = [s for s in SIDES if not (name in IMAGE_SCENARIOS and s == "tuned")]
            runs: dict[str, list[Result]] = {side: [] for side in sides}
            for i in range(args.repeat):
                for side in sides if i % 2 == 0 else sides[::-1]:  # A B C, then C B A: drift in load cancels
                    say(f"{name}: {side} ...")
                    runs[side].append(run_side(side, name, work, args))
            t, h, g = (best(runs[side]) if side in runs else None for side in SIDES)
            results[name] = (t, h, g)
            print(table([row(specs[name].title, t, h, g, max(peaks))]).splitlines()[-1], flush=True)
        if "scaling" in chosen:
            found = scaling.run(args.scaling_sweeps.split(","), set(args.scaling_trainer.split(",")), args, work, say)
            out = work if args.no_save else BENCH / "results"
            scaling_lines = scaling_report.section(found, scaling.titles(args), out, f"{started:%Y-%m-%d}")
            print("\n".join(scaling_lines), flush=True)
    peaks.append(matmul_gflops(args.matmul_size))
    loads.append(load_average())
    text = report(results, specs, peaks, loads, args, started, generation, scaling_lines)
    print("\n" + text)
    if not args.no_save:
        out = BENCH / "results" / f"{started:%Y-%m-%d}.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
