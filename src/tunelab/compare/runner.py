"""Run every variant of one recipe, each in its own process, and collect what each run measured.

Why a process per variant: peak memory is a property of a process (the kernel's high-water mark, or CUDA's peak
allocation), so a variant measured after another in the same process would inherit its peak. A separate process
also means a crash or a missing dependency in one variant leaves the others untouched.

Fairness: every variant is the same recipe file with the same ``seed`` (which fixes the data split, so all variants
train and evaluate on identical examples: the runs record a fingerprint of each split to prove it), the same budget
and evaluation; only ``strategy``, ``train.lr`` and the training seed (``train.seed``: head init, dropout, batch
order) change. Runs go seed by seed, every variant once per round, so a change in machine load during the
comparison spreads over all variants instead of hitting one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelab.compare.presets import Budget, Invalid, Preset, gradual_unfreeze_stages
from tunelab.errors import RunError, TunelabError
from tunelab.recipe import Recipe, load_recipe
from tunelab.runfolder import is_tunelab_run
from tunelab.train.checkpoint import complete_checkpoints

Status = Literal["done", "finished-before", "failed"]


@dataclass
class Plan:
    """What a comparison runs: one recipe, its variants, the seeds, the budget, and overrides shared by all."""

    recipe_path: Path
    folder: Path
    variants: list[Preset | Invalid]
    seeds: list[int]
    budget: Budget
    overrides: list[str] = field(default_factory=list)

    @property
    def runs_dir(self) -> Path:
        """Where the variants' ordinary run folders go (the recipe's output.dir is replaced)."""
        return self.folder / "runs"


@dataclass
class RunResult:
    """One variant at one seed: its run folder and summary, or the error that stopped it."""

    variant: str
    seed: int
    status: Status
    run_dir: Path | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    lr: float | None = None


COMPARE_MARKER = ".tunelab-compare"


def is_comparison(folder: Path) -> bool:
    """Whether ``tunelab compare`` wrote this folder: its marker, or (older comparisons) results.json, or a runs/
    folder holding only tunelab run folders. Only such a folder may be resumed into or replaced by --overwrite."""
    if (folder / COMPARE_MARKER).is_file() or _compare_results(folder / "results.json"):
        return True
    runs = [p for p in (folder / "runs").iterdir() if not p.name.startswith(".")] if (folder / "runs").is_dir() else []
    return bool(runs) and all(p.is_dir() and is_tunelab_run(p) for p in runs)


def _compare_results(path: Path) -> bool:
    """Whether this is a results.json that compare wrote (not any JSON file of that name)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"variants", "runs", "budget"} <= saved.keys()


def prepare_folder(folder: Path, overwrite: bool) -> None:
    """Make the comparison folder, or reuse (resume) or replace (``overwrite``) one that compare wrote earlier.

    A folder of the user's is refused, not written into or deleted: --name and --out could point anywhere.
    """
    if folder.exists() and not (folder.is_dir() and (is_comparison(folder) or not any(folder.iterdir()))):
        raise RunError(f"{folder} exists but is not a tunelab comparison (no {COMPARE_MARKER} or results.json), so "
                       "compare will neither write into it nor delete it with --overwrite. Move or delete it "
                       "yourself, or choose another --name or --out.")
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / COMPARE_MARKER
    if not marker.is_file():
        marker.write_text("written by tunelab compare: --overwrite may replace this folder\n", encoding="utf-8")


def run_name(variant: str, seed: int) -> str:
    """The run folder name of a variant at a seed."""
    return f"{variant}-seed{seed}"


def variant_overrides(plan: Plan, preset: Preset, seed: int, base: Recipe) -> list[str]:
    """The ``--set`` list that turns the recipe into this variant; the comparison's own keys come last so they hold."""
    sets = [f"strategy={json.dumps(preset.strategy)}", f"train.lr={preset.lr!r}", *preset.overrides, *plan.budget.overrides()]
    steps = int(plan.budget.value) if plan.budget.kind == "steps" else base.train.max_steps
    if preset.strategy.get("method") == "gradual_unfreeze" and "every_steps" not in preset.strategy and steps:
        blocks = _block_count(base)
        sets += gradual_unfreeze_stages(steps, blocks) if blocks else []
    return [*sets, *plan.overrides, f"train.seed={seed}", "eval.before=true", f"output.dir={plan.runs_dir}"]


def _block_count(recipe: Recipe) -> int | None:
    """Transformer blocks of the recipe's model, read from its config (no weights loaded); None if unknown."""
    from transformers import AutoConfig

    from tunelab.models import model_path

    try:
        config = AutoConfig.from_pretrained(model_path(recipe.model.name), trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError, TunelabError):
        return None
    return getattr(config, "num_hidden_layers", None)


def run_comparison(plan: Plan, echo: Callable[[str], None] = print) -> list[RunResult]:
    """Run (or resume) every variant at every seed; a failing variant is recorded and the others still run.

    A variant is finished when its run folder has summary.json; a rerun skips it. A run folder left without one
    (interrupted) is resumed from its newest complete checkpoint, or restarted if it has none.
    """
    base = load_recipe(plan.recipe_path, plan.overrides)
    plan.runs_dir.mkdir(parents=True, exist_ok=True)
    (plan.folder / "logs").mkdir(exist_ok=True)
    results: list[RunResult] = []
    total = len(plan.variants) * len(plan.seeds)
    for round_, seed in enumerate(plan.seeds):
        for k, variant in enumerate(plan.variants):
            where = f"[{round_ * len(plan.variants) + k + 1}/{total}] {variant.name} seed {seed}"
            result = _run_variant(plan, variant, seed, base)
            results.append(result)
            echo(f"{where}: {_describe(result)}")
    return results


def _describe(result: RunResult) -> str:
    if result.status == "failed":
        text = " ".join((result.error or "").split())
        return f"FAILED: {text[:300]}{'...' if len(text) > 300 else ''} (full error in report.md)"
    summary = result.summary or {}
    best = summary.get("best", {})
    done = "finished earlier, skipped" if result.status == "finished-before" else f"done in {summary.get('wall_seconds')} s"
    return f"{done} (validation {best.get('metric')} {best.get('value')})"


def _run_variant(plan: Plan, variant: Preset | Invalid, seed: int, base: Recipe) -> RunResult:
    """Validate this variant's recipe here, then train it in a child process (or skip/resume it)."""
    if isinstance(variant, Invalid):
        return RunResult(variant.name, seed, "failed", error=str(variant))
    name = run_name(variant.name, seed)
    run_dir = plan.runs_dir / name
    sets = variant_overrides(plan, variant, seed, base)
    try:
        expected = load_recipe(plan.recipe_path, sets)
    except TunelabError as err:
        return RunResult(variant.name, seed, "failed", error=str(err), lr=variant.lr)
    result = RunResult(variant.name, seed, "done", run_dir, lr=variant.lr)
    if (run_dir / "summary.json").is_file():
        _check_same_recipe(run_dir, expected)
        result.status, result.summary = "finished-before", _read_summary(run_dir)
        return result
    train = [sys.executable, "-m", "tunelab", "train"]
    if (run_dir / "recipe.yaml").is_file() and complete_checkpoints(run_dir / "checkpoints"):
        _check_same_recipe(run_dir, expected)
        command = [*train, str(run_dir), "--resume"]
    else:
        command = [*train, str(plan.recipe_path), *[a for s in sets for a in ("--set", s)], "--name", name, "--overwrite"]
    code, error = _run_process(command, plan.folder / "logs" / f"{name}.log")
    if code == 0 and (run_dir / "summary.json").is_file():
        result.summary = _read_summary(run_dir)
    else:
        result.status, result.error = "failed", error or f"exited with status {code} without writing summary.json"
    return result


def _run_process(command: list[str], log_path: Path) -> tuple[int, str | None]:
    """Run one training process with its output in a log file; returns its exit status and error message, if any.

    On Ctrl-C the child (same terminal, same signal) finishes its step and checkpoints; we wait for that, so a
    rerun of the comparison resumes it instead of starting over.
    """
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.wait()
            raise RunError(f"comparison interrupted; the variant in progress saved a checkpoint (log: {log_path}). "
                           "Run the same command again to resume: finished variants are skipped.") from None
    return code, (_error_from_log(log_path.read_text(encoding="utf-8", errors="replace")) if code else None)


def _child_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def _error_from_log(text: str) -> str | None:
    """The child's own error message ('error: ...' from the CLI), else the last line of its traceback."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()][1:]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return "\n".join(lines[i:]).removeprefix("error:").strip()
    return lines[-1].strip() if lines else None


def _read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def _check_same_recipe(run_dir: Path, expected: Recipe) -> None:
    """Refuse to resume a run that a different plan made (say another budget): mixing them would be unfair."""
    found = load_recipe(run_dir / "recipe.yaml").model_dump(mode="json")
    wanted = expected.model_dump(mode="json")
    if found != wanted:
        differ = sorted(_diff(found, wanted))
        shown = "; ".join(f"{key}: {a!r} there, {b!r} now" for key, a, b in differ[:4])
        raise RunError(f"{run_dir} was run with a different recipe ({shown}). Start a new comparison with --name, "
                       "or pass --overwrite to discard the old runs.")


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def machine_info() -> dict[str, Any]:
    """What the timings were measured on: CPU, cores, memory, accelerator, library versions and the load."""
    import os
    import platform

    import psutil
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    return info
