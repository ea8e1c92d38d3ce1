"""The Python entry points: ``train``, ``evaluate``, ``load`` and ``inspect``. The CLI is a thin layer over these.

``train`` reads like the recipe: data, model, strategy, evaluate before, fit, evaluate after, save, report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from tunelab.augment import augmenter
from tunelab.data.prepare import DataReport, prepare_rows
from tunelab.errors import RecipeError, RunError
from tunelab.evaluate.drift import snapshot, weight_drift
from tunelab.evaluate.memory import RssSampler, peak_rss_bytes
from tunelab.evaluate.metrics import majority_baseline
from tunelab.recipe import Recipe, load_recipe
from tunelab.io import write_json
from tunelab.runfolder import (MetricsLog, check_not_finished, checkpoint_bytes, existing_run, new_run_dir,
                               require_free_space, run_dir_for)
from tunelab.strategies.registry import make_strategy
from tunelab.run import Run, score_split
from tunelab.tasks import build_task
from tunelab.tracking import require_trackers, start_trackers
from tunelab.tasks.generation import side_by_side
from tunelab.train import fsdp
from tunelab.train.checkpoint import complete_checkpoints
from tunelab.train.loop import Trainer, seed_everything
from tunelab.train.optim import head_rate

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _quiet_libraries() -> None:
    """transformers' load reports and progress bars drown our own output; errors still show."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


@dataclass
class PreparedData:
    """Features per split, the label names, and what happened to the rows."""

    splits: dict[str, list[dict[str, Any]]]
    report: DataReport


def prepare_data(recipe: Recipe, task: Any) -> PreparedData:
    """Read, validate, split, sample and featurize the recipe's data through the task."""
    splits, report = prepare_rows(recipe.data, task, recipe.seed, recipe.eval.max_examples, augmenter(recipe))
    return PreparedData(splits, report)


def split_fingerprints(splits: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """A short SHA-256 of each split's features in order: equal fingerprints show two runs saw the very same data."""
    return {name: hashlib.sha256(json.dumps(features, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for name, features in splits.items()}


def parameter_counts(model: torch.nn.Module) -> dict[str, Any]:
    """Total, trainable and frozen parameters (the seed's '247M total, 222M frozen, 24M trainable')."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # counted, not derived, so checkable
    return {"total": total, "trainable": trainable, "frozen": frozen,
            "trainable_share": trainable / total if total else 0.0}


def make_accelerator(precision: str) -> Accelerator:
    """Accelerate with the recipe's train.precision (fp32 = 'no'). Accelerate keeps one precision per process, so a
    run after another of a different precision (a notebook, the tests) starts its state afresh; fp16 is refused
    on a CPU, where Accelerate would silently train in float32."""
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise RecipeError("train.precision: fp16 needs a GPU (float16 autocast with loss scaling); on a CPU use "
                          "bf16 (autocast; faster than fp32 on a CPU with AVX512-BF16 or AMX, slower on one "
                          "without) or fp32")
    wanted = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if AcceleratorState._shared_state.get("_mixed_precision", wanted) != wanted:
        AcceleratorState._reset_state()
    fsdp.before_model_load()
    acc = Accelerator(cpu=not cuda, mixed_precision=wanted)
    fsdp.enable(acc)  # under accelerate launch --use_fsdp: FSDP2, on a CPU too
    return acc


def checkpoint_activations(model: torch.nn.Module, name: str, every: int = 1) -> None:
    """train.activation_checkpointing: each block (or every ``every``-th) keeps only its inputs and reruns in the
    backward pass (transformers' own switch, non-reentrant, so dropout masks are replayed and frozen embeddings need
    no gradient)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise RecipeError(f"train.activation_checkpointing: '{name}' ({type(base).__name__}) does not support it; "
                          "set it to false")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every)


def warn_low_lr(recipe: Recipe) -> None:
    """Warn when train.lr is far below what the strategy needs: a full fine-tuning rate barely moves adapters."""
    wanted = type(recipe.strategy).recommended_lr
    if wanted and recipe.train.lr * 5 <= wanted:
        import warnings

        warnings.warn(f"strategy {recipe.strategy.method} at train.lr={recipe.train.lr:g} will learn slowly: it "
                      f"usually needs about {wanted:g} (--set train.lr={wanted:g})", stacklevel=2)


def _eval_splits(task: Any, model: torch.nn.Module, data: PreparedData, recipe: Recipe) -> dict[str, Any]:
    generated = "test" if data.splits.get("test") else "validation"  # generative tasks generate on one split only
    return {name: score_split(task, model, data.splits[name], recipe, generate=name == generated)
            for name in ("validation", "test") if data.splits.get(name)}


def train(recipe: Recipe | str | Path, *, name: str | None = None, overwrite: bool = False, resume: bool = False,
          overrides: list[str] | None = None) -> Run:
    """Fine-tune as the recipe says and write a complete run folder; returns the ``Run`` (a path-like object with
    the recipe, summary, trained model, ``predict`` and ``evaluate``).

    With ``resume=True`` and a ``name`` (or a run folder as ``recipe``), training continues from the newest complete
    checkpoint and ends as the uninterrupted run would have.
    """
    _quiet_libraries()
    run_dir: Path | None = None
    if isinstance(recipe, (str, os.PathLike)) and Path(recipe).is_dir():
        run_dir, recipe = existing_run(recipe)
        resume = True
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    if resume and run_dir is None:
        if not name:
            raise RunError("--resume needs the run: pass its folder (tunelab train runs/NAME --resume) or --name NAME")
        run_dir, recipe = existing_run(Path(recipe.output.dir) / name)
    acc = make_accelerator(recipe.train.precision)
    if not resume:
        run_dir_for(recipe, name, overwrite)  # a bad name or a folder it may not replace: refused before any work
    require_trackers(recipe.output.trackers)
    if resume:
        check_not_finished(run_dir)
    seed_everything(recipe.seed)
    started = time.time()

    task = build_task(recipe)  # the task loads its own processor (tokenizer, image preprocessing)
    strategy = make_strategy(recipe.strategy, recipe.task.type)
    strategy.check_model_class(task.model_class(), recipe.model.name)  # refuse before reading data or weights
    data = prepare_data(recipe, task)
    seed_everything(recipe.train_seed)
    model = task.build_model()
    warn_low_lr(recipe)
    model = strategy.apply(model)
    if recipe.train.activation_checkpointing:
        checkpoint_activations(model, recipe.model.name, recipe.train.activation_checkpointing_every)
    counts = parameter_counts(model)
    require_free_space(run_dir or Path(recipe.output.dir),
                       checkpoint_bytes(counts["trainable"], counts["total"], recipe.train.keep_checkpoints))
    if run_dir is None:  # created only now that data and model are known to be good
        made = [str(new_run_dir(recipe, name, overwrite)) if acc.is_main_process else ""]
        run_dir = Path(broadcast_object_list(made)[0]) if acc.num_processes > 1 else Path(made[0])
    fixed = {n for n, _ in model.named_parameters()} - set(strategy.trainable_candidates(model))
    before_weights = snapshot(model, fixed)  # frozen weights as digests: a copy would double the memory
    before = _eval_splits(task, model, data, recipe) if recipe.eval.before else {}

    trackers = (start_trackers(recipe.output.trackers, run_dir, run_dir.name, recipe.model_dump(mode="json"), resume)
                if acc.is_main_process else [])
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=acc.is_main_process, trackers=trackers)
    try:
        trainer = Trainer(recipe, task, strategy, model, data.splits["train"], data.splits["validation"], run_dir, acc,
                          data_fingerprint=split_fingerprints(data.splits))
        found = complete_checkpoints(run_dir / "checkpoints") if resume else []
        if found:
            trainer.restore(found[-1])
            log.truncate_after(trainer.state.step)
        elif resume:  # killed before its first checkpoint: start over in the same folder, forgetting the partial log
            log.truncate_after(0)
    except BaseException:
        log.close()  # an MLflow run left open would make the next run in this process fail to start its own
        raise
    try:
        fit_started = time.perf_counter()
        with RssSampler() as rss:
            state = trainer.fit(log)
        fit_seconds = time.perf_counter() - fit_started
    except KeyboardInterrupt:
        raise RunError(f"interrupted at step {trainer.state.step}; a checkpoint was saved. Continue with: "
                       f"tunelab train {run_dir} --resume") from None
    finally:
        log.close()  # tracker files complete, however training ended
    trainer.load_best()
    final_model = trainer.plain_model(lambda: strategy.apply(task.build_model()))  # FSDP: gathered, unsharded
    after = _eval_splits(task, final_model, data, recipe)
    samples = side_by_side(before, after)  # generated text side by side: input, reference, before, after
    summary = {
        "run": str(run_dir), "task": recipe.task.type, "model": recipe.model.name, "strategy": recipe.strategy.method,
        "data": {"rows": data.report.rows, "skipped": data.report.skipped, "truncated": data.report.truncated,
                 "converted": dict(data.report.converted),
                 "source": data.report.source, "fingerprint": split_fingerprints(data.splits),
                 **({"synthetic": data.report.synthetic} if data.report.synthetic else {})},
        "parameters": counts, "learning_rates": {"lr": recipe.train.lr,
                                                 "head_lr": head_rate(recipe, strategy.default_head_lr)},
        "before": before, "after": after,
        "best": {"metric": recipe.eval.metric, "value": state.best_metric, "step": state.best_step},
        "steps": state.step, "epochs": state.epoch, "stopped_early": state.stopped_early, "out_of_time": state.out_of_time,
        "skipped_steps": state.skipped_steps,
        "train_seconds": round(state.train_seconds, 2), "wall_seconds": round(time.time() - started, 2),
        "examples_per_second": round(state.examples_seen / max(state.train_seconds, 1e-9), 2),
        "peak_rss_bytes": peak_rss_bytes(), "weight_drift": weight_drift(before_weights, final_model,
                                                                         strategy.depth_map(final_model)),
        "processes": acc.num_processes, "fit_seconds": round(fit_seconds, 2), "speedups": trainer.speedups,
        "one_off_seconds": round(state.one_off_seconds, 2),
        "rss_before_train_bytes": rss.baseline_bytes, "train_peak_rss_bytes": rss.peak_bytes,
    }
    if samples:
        summary["samples"] = samples
    if torch.cuda.is_available():  # on a GPU the memory that matters is the accelerator's, not the host's
        summary["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    if "label" in (data.splits["train"][0] if data.splits["train"] else {}):
        labels = [f["label"] for f in data.splits["train"]]
        summary["majority_baseline"] = {n: majority_baseline(labels, [f["label"] for f in data.splits[n]])
                                        for n in ("validation", "test") if data.splits.get(n)}
    if acc.is_main_process:
        if hasattr(task, "figures"):  # generative tasks: a grid of sample images
            summary["figures"] = task.figures(final_model, run_dir)
        task.save(final_model, run_dir / "final", strategy)
        from tunelab.report import write_report

        write_report(run_dir, summary, log.records)
        write_json(run_dir / "summary.json", summary)  # last: its presence marks the run finished
    acc.wait_for_everyone()
    return Run(run_dir)


def load(run_dir: str | Path) -> Any:
    """A trained run's task with its final model (``.model``), ready to ``predict``/``evaluate``."""
    _quiet_libraries()
    return Run(run_dir).task


def evaluate(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Metrics of a run's final model on one split, rebuilt exactly as training split the data."""
    _quiet_libraries()
    return Run(run_dir).evaluate(split)


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """The run's model as one plain folder of its ecosystem (adapters merged in); returns the folder."""
    _quiet_libraries()
    run = Run(run_dir)
    return run.task.export(Path(out) if out else run.dir / "merged")
