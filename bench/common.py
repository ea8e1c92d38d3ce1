"""What both sides of the bench share: the scenarios, the data files, FLOP accounting and the result records.

Each side runs in its own process (``tunelab_side.py``, ``trainer_baseline.py``) and writes one JSON result; the
harness (``run.py``) starts them one after the other and compares.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SEED = 0
CLASSIFIER_MODEL = "minilm-l6"
CAUSAL_MODEL = "smollm2-135m-instruct"
LABELS = ["fresh", "rotten"]  # tunelab sorts label names; the Trainer side uses the same ids
IMAGE_MODEL = "efficientnet-lite0"
IMAGE_TASK = {"image_size": 64, "hflip": False, "scale": [0.6, 1.0]}  # as recipes/vision.yaml
IMAGE_EPOCHS, IMAGE_FE_EPOCHS = 3, 5
IMAGE_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Scenario:
    """One piece of work, done the same way by both sides."""

    name: str
    title: str
    model: str
    task: str  # classification | causal_lm
    strategy: dict[str, Any]  # tunelab's strategy section; the Trainer side does the same by hand
    lr: float
    batch_size: int
    epochs: int | None = None  # whole epochs over the training subset, or
    steps: int | None = None  # a number of optimiser steps
    max_length: int = 128
    notes: list[str] = field(default_factory=list)
    data: str = ""  # the data files' stem under the work folder (default: sentiment, support or digits by task)
    task_options: dict[str, Any] = field(default_factory=dict)  # more keys for tunelab's task section
    eval_batch: int = 0  # validation batch size (default: 64, 16 for the causal LM)

    @property
    def data_stem(self) -> str:
        return self.data or {"classification": "sentiment", "causal_lm": "support"}.get(self.task, "digits")

    @property
    def eval_batch_size(self) -> int:
        return self.eval_batch or (16 if self.task == "causal_lm" else 64)

    def save(self, path: Path) -> None:
        """The scenario as JSON, for a side started with ``--spec`` (the scaling sweep's points)."""
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @staticmethod
    def load(path: Path) -> Scenario:
        return Scenario(**json.loads(path.read_text(encoding="utf-8")))


def scenarios(train_rows: int, causal_steps: int) -> dict[str, Scenario]:
    """The bench's scenarios; full and LoRA run one epoch of the subset as a fixed number of steps."""
    one_epoch = -(-train_rows // 32)
    lora = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05}
    return {s.name: s for s in [
        Scenario("full", "full fine-tuning", CLASSIFIER_MODEL, "classification", {"method": "full"}, 1e-4, 32,
                 steps=one_epoch),
        Scenario("lora", "LoRA r=8 (query, value)", CLASSIFIER_MODEL, "classification", lora, 5e-4, 32,
                 steps=one_epoch),
        Scenario("freeze", "freeze bottom 50% + embeddings, 3 epochs", CLASSIFIER_MODEL, "classification",
                 {"method": "freeze", "bottom": 0.5, "cache_boundary": True}, 1e-4, 32, epochs=3,
                 notes=["tunelab: cache_boundary on, so the frozen blocks run in eval mode (no dropout); the Trainer "
                        "runs them in train mode (dropout on), as model.train() does"]),
        Scenario("feature_extraction", "feature extraction (head only), 5 epochs", CLASSIFIER_MODEL, "classification",
                 {"method": "feature_extraction", "cache_features": True}, 1e-3, 32, epochs=5,
                 notes=["tunelab: backbone in eval mode, head inputs cached; the Trainer runs the frozen backbone in "
                        "train mode (dropout on) every epoch"]),
        Scenario("causal_lora", "LoRA r=8 (q_proj, v_proj), causal LM", CAUSAL_MODEL, "causal_lm",
                 {**lora, "target_modules": ["q_proj", "v_proj"]}, 5e-4, 8, steps=causal_steps, max_length=256),
        Scenario("image", f"images: full fine-tuning, {IMAGE_EPOCHS} epochs", IMAGE_MODEL, "image_classification",
                 {"method": "full"}, 1e-3, 32, epochs=IMAGE_EPOCHS, task_options=IMAGE_TASK,
                 notes=["both sides: random resized crop (area 0.6-1) to 64 px, no flip, timm's transforms; "
                        "EfficientNet-Lite0 with the packaged ImageNet weights and dropout 0.2 before a new 10-class "
                        "head; the Trainer side reads the PNG folders with datasets' imagefolder"]),
        Scenario("image_fe", f"images: feature extraction (head only), {IMAGE_FE_EPOCHS} epochs", IMAGE_MODEL,
                 "image_classification", {"method": "feature_extraction", "cache_features": True}, 1e-3, 32,
                 epochs=IMAGE_FE_EPOCHS, task_options={**IMAGE_TASK, "augment": False},
                 notes=["no augmentation on either side (tunelab's cached features are of un-augmented images); "
                        "tunelab: backbone in eval mode, pooled features cached; the Trainer runs the frozen backbone "
                        "in train mode (batch norms use batch statistics and update their running ones) every epoch, "
                        "as model.train() does"]),
    ]}


# ---- data ---------------------------------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_classification_data(work: Path, train_rows: int, validation_rows: int) -> None:
    """A seeded subset of Rotten Tomatoes as train/validation/test JSONL (text, label), read by both sides."""
    from tunelab.data.builtin import rotten_tomatoes

    rows, _ = rotten_tomatoes()
    random.Random(SEED).shuffle(rows)
    cut = [0, train_rows, train_rows + validation_rows, train_rows + validation_rows + 64]
    for name, (start, end) in zip(("train", "validation", "test"), zip(cut, cut[1:])):
        write_jsonl(work / f"sentiment-{name}.jsonl", rows[start:end])


def write_causal_data(work: Path, train_rows: int, validation_rows: int) -> None:
    """Tech-support chats as JSONL (messages) for tunelab, and the same examples tokenized by tunelab's causal_lm
    task (input_ids, labels with -100 outside the answers) for the Trainer side, so both train on the same tokens."""
    from tunelab.data.builtin import load_builtin

    splits, _ = load_builtin("tech-support")
    chosen = {"train": splits["train"][:train_rows], "validation": splits["validation"][:validation_rows],
              "test": splits["test"][:4]}
    for name, rows in chosen.items():
        write_jsonl(work / f"support-{name}.jsonl", [{"messages": r["messages"]} for r in rows])
    write_causal_tokens(work)


def write_causal_tokens(work: Path, stem: str = "support", max_length: int = 256,
                        options: dict[str, Any] | None = None) -> None:
    """``<stem>-<split>-tokens.jsonl``: the chats as tunelab's causal_lm task tokenizes them (input_ids, labels -100
    outside the answers), the very tokens the Trainer side trains on."""
    from tunelab.api import prepare_data
    from tunelab.models import load_tokenizer
    from tunelab.recipe import parse_recipe
    from tunelab.tasks import build_task

    recipe = parse_recipe(causal_recipe_data(work, stem, max_length, options) | {"model": {"name": CAUSAL_MODEL}})
    task = build_task(recipe, load_tokenizer(CAUSAL_MODEL))
    data = prepare_data(recipe, task)
    for name in ("train", "validation"):
        write_jsonl(work / f"{stem}-{name}-tokens.jsonl",
                    [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in data.splits[name]])


def write_generation_data(work: Path, prompts: int, adapter: Path | None = None) -> None:
    """The generation scenario's prompts (the first held-out test verses of bible-en-es, as recipes/translation.yaml
    scores them) and the adapter both sides load: ``adapter`` (a trained run's final/), or a seeded random LoRA
    r=16 on every projection of SmolLM2 (B ~ N(0, 0.002), so it changes the outputs), written once."""
    from tunelab.data.builtin import load_builtin

    splits, _ = load_builtin("bible-en-es")
    write_jsonl(work / "generation-prompts.jsonl", [{"source": r["source"]} for r in splits["test"][:prompts]])
    if adapter is None:
        adapter = work / "generation-adapter"
        if not (adapter / "adapter_config.json").is_file():
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            from tunelab.models import model_path

            torch.manual_seed(SEED)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path(CAUSAL_MODEL)), LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"]))
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.002)
            model.save_pretrained(adapter)
    (work / "generation-adapter.txt").write_text(str(adapter), encoding="utf-8")


def write_image_data(work: Path, train_rows: int, validation_rows: int, test_rows: int = 50) -> None:
    """A seeded subset of scikit-learn's digits as RGB PNG files in ``digits/<split>/<label>/<n>.png``, the image
    folder layout both sides read (tunelab's data.train folder, datasets' imagefolder). Written once per work folder."""
    from PIL import Image

    from tunelab.data.images import digits

    rows, _ = digits()
    if train_rows + validation_rows + test_rows > len(rows):
        raise SystemExit(f"the digits have {len(rows)} images; {train_rows} + {validation_rows} + {test_rows} asked")
    marker = work / "digits" / "sizes.json"
    sizes = json.dumps([train_rows, validation_rows, test_rows])
    if marker.is_file() and marker.read_text() == sizes:
        return
    shutil.rmtree(work / "digits", ignore_errors=True)
    random.Random(SEED).shuffle(rows)
    cut = [0, train_rows, train_rows + validation_rows, train_rows + validation_rows + test_rows]
    for split, (start, end) in zip(IMAGE_SPLITS, zip(cut, cut[1:])):
        for n, row in enumerate(rows[start:end]):
            path = work / "digits" / split / row["label"] / f"{n:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(row["image"]).convert("RGB").save(path)
    marker.write_text(sizes)


def image_backbone_folder(work: Path) -> str:
    """The packaged EfficientNet-Lite0 with its ImageNet head as a plain timm folder (``save_for_hf``), which the
    Trainer side loads as a timm user does: ``timm.create_model("local-dir:...", pretrained=True, num_classes=10)``."""
    import timm

    from tunelab.models import vision

    folder = work / "lite0-imagenet"
    if not (folder / "model.safetensors").is_file():
        model = timm.create_model(vision.LITE0_ARCH, pretrained=False, pretrained_cfg_overlay=vision.LITE0_CFG)
        vision.load_packaged_lite0(model)
        vision.save_image_model(model, vision.Preprocessing.of(model), folder)
    return str(folder)


def write_model_folders(work: Path, names: set[str]) -> None:
    """Where each catalog model's Hugging Face (or timm) folder is, so the Trainer side loads it without tunelab."""
    from tunelab.models import model_path

    folders = {name: image_backbone_folder(work) if name == IMAGE_MODEL else model_path(name) for name in sorted(names)}
    (work / "models.json").write_text(json.dumps(folders), encoding="utf-8")


def causal_recipe_data(work: Path, stem: str = "support", max_length: int = 256,
                       options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe sections that fix the causal LM data and its featurization (shared with write_causal_data)."""
    return {"task": {"type": "causal_lm", "max_length": max_length, "loss_on": "answer",
                     "system_prompt": "You are a helpful support assistant.", **(options or {})},
            "data": {"on_bad_rows": "skip", **{split: str(work / f"{stem}-{split}.jsonl")
                                               for split in ("train", "validation", "test")}}}


def run_script(script: str, arguments: list[str], log: Path, result: Path) -> Result:
    """One side in a fresh process (so its peak RSS is its own), output to ``log``; its Result, or exit with the log's
    end when it failed."""
    import subprocess
    import sys

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, str(BENCH / script), *arguments], stdout=handle,
                              stderr=subprocess.STDOUT, env=env, cwd=BENCH)
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{script} {arguments[0]} failed (exit {done.returncode}); end of {log}:\n{tail}")
    return Result.load(result)


# ---- measuring ----------------------------------------------------------------------------------------------------

def matmul_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    """float32 GFLOP/s of a large square matmul on all of torch's threads: the machine's practical ceiling."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def peak_rss_bytes() -> int:
    """The process's high-water mark of resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def steady_rate(examples: list[int], ends: list[float]) -> float | None:
    """Examples per second over the steps after the first (from the first step's end to the last's): the training
    rate without start-up, validation or checkpoints; None with fewer than two steps."""
    if len(ends) < 2:
        return None
    return sum(examples[1:]) / (ends[-1] - ends[0])


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Work:
    """FLOP accounting of one run, counted on real (non-padding) tokens: forward 2 x params x tokens per block run,
    backward 2 x params x tokens for the input gradients of each block gradients pass through and 2 x params x
    tokens for the weight gradients of each block that trains (so full fine-tuning is the usual 6 N t)."""

    block_params: int  # parameters of one transformer block
    blocks: int
    extra_forward_params: int = 0  # a matmul outside the blocks every token goes through (a language-model head)
    flops: float = 0.0

    def train(self, tokens: int, run: int, grad: int, weight: int, extra_grad: bool = False) -> None:
        """Training tokens through ``run`` blocks forward, ``grad`` blocks backward, ``weight`` trainable blocks."""
        extra = self.extra_forward_params * (4 if extra_grad else 2)
        self.flops += tokens * (2 * self.block_params * (run + grad + weight) + extra)

    def forward(self, tokens: int, run: int) -> None:
        """Tokens through ``run`` blocks forward only (evaluation, building a cache)."""
        self.flops += tokens * (2 * self.block_params * run + 2 * self.extra_forward_params)


def image_forward_flops(model: Any, size: int) -> float:
    """FLOPs of one image's forward pass at ``size`` pixels (torch's FLOP counter on an eval-mode batch of two)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 3, size, size))
    model.train(was_training)
    return counter.get_total_flops() / 2


def image_flops(forward: float, train_images: int, validation_images: int, backward: bool) -> float:
    """Useful FLOPs of an image run: each training image forward (and backward, 2x forward, when the backbone trains)
    and each validation image forward. A cache that skips the backbone passes only the images it ran."""
    return forward * (train_images * (3 if backward else 1) + validation_images)


def block_shape(model: Any) -> tuple[int, int, int]:
    """(parameters per block, blocks, parameters of a language-model head every token passes through)."""
    from tunelab.strategies.layers import find_block_stacks

    stack = find_block_stacks(model)[0]
    head = getattr(model, "lm_head", None)
    return (sum(p.numel() for p in stack.blocks[0].parameters()), len(stack.blocks),
            head.weight.numel() if head is not None else 0)


@dataclass
class Result:
    """What one side measured on one scenario."""

    side: str
    scenario: str
    examples: int  # training examples processed (an example seen in 3 epochs counts 3 times)
    tokens: int  # their real (non-padding) tokens
    padded_tokens: int  # the tokens the training batches held, padding included
    seconds: float  # wall time of the training call (train steps, the same validation passes, checkpoints)
    cpu_seconds: float  # CPU time of the process in that window, all threads
    peak_rss_bytes: int
    metric_name: str
    metric: float
    flops: float  # useful FLOPs performed in the window (see Work)
    settings: dict[str, Any] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @staticmethod
    def load(path: Path) -> Result:
        return Result(**json.loads(path.read_text(encoding="utf-8")))
