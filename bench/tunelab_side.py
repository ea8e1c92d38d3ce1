"""The tunelab side of one bench scenario, in its own process: ``tunelab.api.train`` on a recipe.

The window timed is ``Trainer.fit`` (training steps, any cache building, the validation passes at epoch ends,
checkpoints), the same work the Trainer side's ``trainer.train()`` does. Wrapping ``fit`` and ``step`` here only
measures; the library runs unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import (
    IMAGE_SPLITS,
    SEED,
    Result,
    Scenario,
    Work,
    block_shape,
    causal_recipe_data,
    image_flops,
    image_forward_flops,
    load_average,
    peak_rss_bytes,
    scenarios,
    steady_rate,
)


def recipe_for(s: Scenario, work: Path) -> dict[str, Any]:
    """The tunelab recipe of a scenario: the same data, model, batch size, length, steps, rate and seed. The new head
    trains at the scenario's rate too (optim.head_lr), not at tunelab's default 3e-2 for heads over a frozen pooler:
    the Trainer has one rate, and the metric column compares like with like."""
    train = {"lr": s.lr, "batch_size": s.batch_size, "warmup_ratio": 0.06, "schedule": "linear", "max_grad_norm": 1.0,
             "keep_checkpoints": 1, "log_every": 1000}
    train |= {"epochs": s.epochs} if s.epochs else {"max_steps": s.steps}
    raw: dict[str, Any] = {
        "name": f"bench-{s.name}", "seed": SEED, "model": {"name": s.model}, "strategy": s.strategy,
        "optim": {"weight_decay": 0.01, "head_lr": s.lr}, "train": train, "output": {"dir": str(work / "runs")},
    }
    accuracy = {"metric": "accuracy", "before": False, "batch_size": s.eval_batch_size}
    if s.task == "classification":
        raw["task"] = {"type": "classification", "max_length": s.max_length, "truncation": True, **s.task_options}
        raw["data"] = {split: str(work / f"{s.data_stem}-{split}.jsonl") for split in ("train", "validation", "test")}
        raw["eval"] = accuracy
    elif s.task == "image_classification":  # the PNG folders written by common.write_image_data
        raw["task"] = {"type": "image_classification", **s.task_options}
        raw["data"] = {split: str(work / s.data_stem / split) for split in IMAGE_SPLITS}
        raw["eval"] = accuracy
    else:
        raw |= causal_recipe_data(work, s.data_stem, s.max_length, s.task_options)
        raw["eval"] = {"metric": "loss", "mode": "min", "before": False, "batch_size": s.eval_batch_size}
        raw["generate"] = {"max_new_tokens": 8, "samples": 1}
    return raw



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", help="a scenario of common.scenarios, or a JSON file written by Scenario.save")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=0)
    parser.add_argument("--causal-steps", type=int, default=0)
    args = parser.parse_args()
    s = (Scenario.load(Path(args.scenario)) if args.scenario.endswith(".json")
         else scenarios(args.train_rows, args.causal_steps)[args.scenario])

    from tunelab import api
    from tunelab.recipe import parse_recipe
    from tunelab.train.loop import Trainer

    seen: dict[str, Any] = {"examples": 0, "tokens": 0, "padded": 0, "seconds": 0.0, "cpu": 0.0, "trainer": None,
                            "step_examples": [], "step_ends": []}
    original_step, original_fit = Trainer.step, Trainer.fit

    def counted_step(self: Trainer, ids: list[int]) -> float:
        lengths = [len(self.train_features[i].get("input_ids", ())) for i in ids]  # images have no tokens: 0
        micro = -(-len(ids) // self.recipe.train.grad_accum)
        seen["examples"] += len(ids)
        seen["tokens"] += sum(lengths)
        seen["padded"] += sum(max(lengths[k : k + micro]) * len(lengths[k : k + micro]) for k in range(0, len(ids), micro))
        loss = original_step(self, ids)
        seen["step_examples"].append(len(ids))
        seen["step_ends"].append(time.perf_counter())
        return loss

    def timed_fit(self: Trainer, log: Any) -> Any:
        seen["trainer"] = self
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original_fit(self, log)
        finally:
            seen["seconds"] += time.perf_counter() - wall
            seen["cpu"] += time.process_time() - cpu

    Trainer.step, Trainer.fit = counted_step, timed_fit
    load_before = load_average()
    raw = recipe_for(s, args.work)
    run_dir = api.train(parse_recipe(raw, f"bench {s.name}"), name=s.name, overwrite=True)
    load_after = load_average()

    trainer = seen["trainer"]
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metric_name = "loss" if s.task == "causal_lm" else "accuracy"
    evals = [r for r in records if r.get("split") == "validation"]
    lengths = [len(f.get("input_ids", ())) for f in trainer.train_features]
    work = (image_work(s, trainer, seen["examples"], len(evals)) if s.task == "image_classification"
            else flops(s, trainer, seen["tokens"], len(evals)))
    result = Result("tunelab", s.name, seen["examples"], seen["tokens"], seen["padded"], seen["seconds"], seen["cpu"],
                    peak_rss_bytes(), metric_name, float(evals[-1][metric_name]), work,
                    settings={"speedups": summary["speedups"], "group_by_length": trainer.recipe.train.group_by_length,
                              "optimizer": "torch AdamW, fused", "steps": summary["steps"],
                              "validation_passes": len(evals), "train_rows": len(lengths),
                              "train_tokens_min_max": [min(lengths), max(lengths)],
                              "steady_examples_per_s": steady_rate(seen["step_examples"], seen["step_ends"])},
                    load_before=load_before, load_after=load_after)
    result.save(args.work / f"{s.name}-tunelab.json")


def image_work(s: Scenario, trainer: Any, train_images: int, passes: int) -> float:
    """Useful FLOPs of an image run's fit window: with the head cache, one backbone pass over the training and
    validation images (the head's own FLOPs are negligible); otherwise every step and every validation pass."""
    forward = image_forward_flops(trainer.acc.unwrap_model(trainer.model), s.task_options["image_size"])
    validation = len(trainer.val_features)
    if trainer.cache:
        return image_flops(forward, train_images // passes, validation, backward=False)
    return image_flops(forward, train_images, validation * passes, backward=s.strategy["method"] != "feature_extraction")


def flops(s: Scenario, trainer: Any, train_tokens: int, passes: int) -> float:
    """Useful FLOPs of the fit window, counting what tunelab really ran (a cache skips the frozen part);
    ``passes`` is the number of validation passes (one per epoch in the epoch scenarios)."""
    model = trainer.acc.unwrap_model(trainer.model)
    per_block, blocks, head = block_shape(model)
    work = Work(per_block, blocks, head)
    val_tokens = sum(len(f["input_ids"]) for f in trainer.val_features)
    cache = trainer.cache
    method = s.strategy["method"]
    if method == "feature_extraction" and cache:
        work.forward(train_tokens // passes + val_tokens, blocks)  # the one pass that fills the cache
    elif method == "feature_extraction":
        work.train(train_tokens, blocks, 0, 0)
        work.forward(val_tokens * passes, blocks)
    elif method == "freeze":
        low = cache.boundary if cache else blocks // 2
        top = blocks - low
        if cache:
            work.forward(train_tokens // passes + val_tokens, low)
        work.train(train_tokens, top if cache else blocks, top, top)
        work.forward(val_tokens * passes, top if cache else blocks)
    else:
        weight = blocks if method == "full" else 0
        work.train(train_tokens, blocks, blocks, weight, extra_grad=bool(head))
        work.forward(val_tokens * passes, blocks)
    return work.flops


if __name__ == "__main__":
    main()
