"""The baseline side of one bench scenario, in its own process: a plain ``transformers.Trainer`` script (+ ``peft``
for LoRA), written as a typical user writes it: ``datasets`` for the data, the Trainer's defaults, and only the
hyperparameters the two sides must share set by hand (batch size, steps or epochs, learning rate, warmup, weight
decay, gradient clipping, seed, evaluation at each epoch end or once at the end).

The one addition is a ``training_step`` override that counts tokens before calling the Trainer's own step.

With ``--tuned`` it is the script of a user who knows the Trainer: batches grouped by length
(``train_sampling_strategy="group_by_length"``, transformers' ``LengthGroupedSampler``: batches of similar length
drawn from shuffled mega-batches), torch's threads set to the physical cores, and ``--workers`` data-loader
workers (default 0: on a 2-core machine a worker process competes with the two compute threads, and the batches
are already tokenized, so there is nothing for it to do ahead).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    LABELS,
    SEED,
    Result,
    Scenario,
    Work,
    block_shape,
    load_average,
    peak_rss_bytes,
    read_jsonl,
    scenarios,
    steady_rate,
)


def model_folder(name: str, work: Path) -> str:
    """The catalog model's Hugging Face folder (the packaged MiniLM, or SmolLM2 converted once from GGUF)."""
    return json.loads((work / "models.json").read_text(encoding="utf-8"))[name]


def build(s: Scenario, work: Path) -> tuple[Any, Any, Any, Any, Any]:
    """Model, tokenizer, train and validation datasets, and collator, as a user would set them up."""
    from datasets import Dataset, load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
    )

    folder = model_folder(s.model, work)
    if s.task == "image_classification":
        import trainer_image

        model, train, validation, collator = trainer_image.build(s, folder, work)
        return model, None, train, validation, collator
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if s.task == "classification":
        files = {split: str(work / f"{s.data_stem}-{split}.jsonl") for split in ("train", "validation")}
        raw = load_dataset("json", data_files=files)
        ids = {name: i for i, name in enumerate(LABELS)}

        def encode(batch: dict[str, list]) -> dict[str, list]:
            out = tokenizer(batch["text"], truncation=True, max_length=s.max_length)
            out["label"] = [ids[label] for label in batch["label"]]
            return out

        data = raw.map(encode, batched=True, remove_columns=["text"])
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id=ids)
        collator = DataCollatorWithPadding(tokenizer)
        return model, tokenizer, data["train"], data["validation"], collator
    # causal LM: the exact token ids and answer-only labels tunelab's task made (see common.write_causal_data)
    train = Dataset.from_list(read_jsonl(work / f"{s.data_stem}-train-tokens.jsonl"))
    validation = Dataset.from_list(read_jsonl(work / f"{s.data_stem}-validation-tokens.jsonl"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return model, tokenizer, train, validation, collator


def apply_strategy(s: Scenario, model: Any) -> Any:
    """What a user writes for each strategy: peft for LoRA, requires_grad for freezing."""
    method = s.strategy["method"]
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        task_type = TaskType.SEQ_CLS if s.task == "classification" else TaskType.CAUSAL_LM
        targets = s.strategy.get("target_modules") or ["query", "value"]
        config = LoraConfig(task_type=task_type, r=s.strategy["r"], lora_alpha=s.strategy["alpha"],
                            lora_dropout=s.strategy["dropout"], target_modules=targets)
        return get_peft_model(model, config)
    if method == "freeze":  # embeddings and the bottom half of the encoder blocks
        layers = model.bert.encoder.layer
        for module in [model.bert.embeddings, *layers[: len(layers) // 2]]:
            module.requires_grad_(False)
    if method == "feature_extraction":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("classifier."))
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", help="a scenario of common.scenarios, or a JSON file written by Scenario.save")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=0)
    parser.add_argument("--causal-steps", type=int, default=0)
    parser.add_argument("--tuned", action="store_true", help="length-grouped batches, threads, workers")
    parser.add_argument("--workers", type=int, default=0, help="with --tuned: dataloader_num_workers")
    args = parser.parse_args()
    s = (Scenario.load(Path(args.scenario)) if args.scenario.endswith(".json")
         else scenarios(args.train_rows, args.causal_steps)[args.scenario])
    images = s.task == "image_classification"

    import numpy as np
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.utils import logging

    logging.set_verbosity_error()
    tuned: dict[str, Any] = {}
    if args.tuned:
        import psutil

        torch.set_num_threads(psutil.cpu_count(logical=False) or torch.get_num_threads())
        tuned = {"dataloader_num_workers": args.workers, "dataloader_persistent_workers": args.workers > 0}
        if not images:  # every image has the same size: nothing to group
            tuned["train_sampling_strategy"] = "group_by_length"
    set_seed(SEED)
    model, tokenizer, train, validation, collator = build(s, args.work)
    model = model if images else apply_strategy(s, model)  # trainer_image.build froze what it must
    seen: dict[str, Any] = {"examples": 0, "tokens": 0, "padded": 0, "step_examples": [], "step_ends": []}

    class CountingTrainer(Trainer):
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
            rows = len(inputs["labels"])
            seen["examples"] += rows
            seen["step_examples"].append(rows)  # one micro-batch per step: no gradient accumulation here
            if "attention_mask" in inputs:
                mask = inputs["attention_mask"]
                seen["tokens"] += int(mask.sum())
                seen["padded"] += mask.numel()
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        """The time each optimiser step ends (before any evaluation it triggers), for the steady rate."""

        def on_step_end(self, *_: Any, **__: Any) -> None:
            seen["step_ends"].append(time.perf_counter())

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    schedule = {"num_train_epochs": s.epochs, "eval_strategy": "epoch"} if s.epochs else {
        "max_steps": s.steps, "eval_strategy": "steps", "eval_steps": s.steps}
    training_args = TrainingArguments(
        output_dir=str(args.work / "hf" / s.name), per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=64 if s.task == "classification" else 16, learning_rate=s.lr, weight_decay=0.01,
        warmup_steps=0.06, lr_scheduler_type="linear", max_grad_norm=1.0, seed=SEED, report_to="none", **schedule,
        **tuned, **({"remove_unused_columns": False} if images else {}))  # the images are made on access
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                              data_collator=collator, processing_class=tokenizer, callbacks=[StepClock()],
                              compute_metrics=None if s.task == "causal_lm" else accuracy)
    load_before = load_average()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    load_after = load_average()

    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    if s.task != "causal_lm":
        metric_name, metric = "accuracy", evals[-1]["eval_accuracy"]
    else:  # the Trainer averages per-batch means; tunelab reports loss per answer token, so compute that here
        metric_name, metric = "loss", token_loss(trainer.model, validation, collator)
    side = "trainer-tuned" if args.tuned else "trainer"
    if images:
        import trainer_image

        work = trainer_image.work(s, trainer.model, seen["examples"], len(validation), len(evals))
        lengths = [0]
    else:
        work = flops(s, trainer.model, seen["tokens"], validation, len(evals))
        lengths = [len(ids) for ids in train["input_ids"]]
    result = Result(side, s.name, seen["examples"], seen["tokens"], seen["padded"], seconds, cpu_seconds,
                    peak_rss_bytes(), metric_name, float(metric), work,
                    settings={"optim": str(training_args.optim.value), "train_sampling_strategy":
                              training_args.train_sampling_strategy, "dataloader_num_workers":
                              training_args.dataloader_num_workers, "torch_compile": training_args.torch_compile,
                              "save_strategy": str(training_args.save_strategy.value), "save_steps":
                              training_args.save_steps, "steps": trainer.state.global_step, "validation_passes": len(evals),
                              "threads": torch.get_num_threads(), "train_rows": len(train),
                              "train_tokens_min_max": [min(lengths), max(lengths)],
                              "steady_examples_per_s": steady_rate(seen["step_examples"], seen["step_ends"])},
                    load_before=load_before, load_after=load_after)
    result.save(args.work / f"{s.name}-{side}.json")


@torch.no_grad()
def token_loss(model: Any, validation: Any, collator: Any) -> float:
    """Validation loss per answer token (outside the timed window), the definition tunelab reports."""
    model.eval()
    total, count = 0.0, 0
    rows = [dict(r) for r in validation]
    for start in range(0, len(rows), 16):
        batch = collator(rows[start : start + 16])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        total += torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum").item()
        count += int(keep.sum())
    return total / count


def flops(s: Scenario, model: Any, train_tokens: int, validation: Any, passes: int) -> float:
    """Useful FLOPs of the window: every epoch runs the whole model; gradients stop at the lowest trainable block."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    per_block, blocks, head = block_shape(base)
    work = Work(per_block, blocks, head)
    method = s.strategy["method"]
    val_tokens = sum(len(ids) for ids in validation["input_ids"])
    if method == "feature_extraction":
        work.train(train_tokens, blocks, 0, 0)
    elif method == "freeze":
        top = blocks - blocks // 2
        work.train(train_tokens, blocks, top, top)
    else:
        work.train(train_tokens, blocks, blocks, blocks if method == "full" else 0, extra_grad=bool(head))
    work.forward(val_tokens * passes, blocks)
    return work.flops


if __name__ == "__main__":
    main()
