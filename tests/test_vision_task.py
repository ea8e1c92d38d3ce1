"""Image classification end to end on timm's tiny config-built CNN (test_efficientnet, 100k parameters, with batch
norm): every strategy trains exactly what it should and leaves frozen weights *and buffers* bitwise alone, bad
images are named or counted, a run resumes exactly, and final/ reloads in plain timm with the same logits."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from tests.conftest import interrupt_after
from tunelab import api
from tunelab.errors import DataError, RecipeError, RunError
from tunelab.recipe import load_recipe
from tunelab.strategies import layers
from tunelab.strategies.registry import make_strategy
from tunelab.tasks import build_task
from tunelab.train.loop import seed_everything
from tunelab.train.optim import make_optimizer, param_groups

CNN = "test_efficientnet"
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}


def draw(colour: tuple[int, int, int], seed: int, size: int = 24) -> Image.Image:
    """A noisy image of one dominant colour: learnable from pixels, different every time."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for label, colour in COLOURS.items():
        (root / label).mkdir()
        for i in range(14):
            draw(colour, sum(map(ord, label)) * 100 + i).save(root / label / f"{i}.png")
    return root


def image_recipe(tmp_path: Path, folder: Path, **sections: Any) -> Path:
    raw: dict[str, Any] = {
        "name": "img", "seed": 0, "model": {"name": CNN},
        "task": {"type": "image_classification", "pretrained": False, "image_size": 32},
        "data": {"train": str(folder), "split": {"validation": 0.2, "test": 0.2}},
        "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "eval_every": 3, "warmup_ratio": 0.0},
        "eval": {"before": False, "batch_size": 16},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# ---- the block finder sees CNN stages --------------------------------------------------------------------------
def test_cnn_stages_are_the_blocks_of_every_layer_wise_strategy() -> None:
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    assert [name for name, _ in layers.ordered_blocks(model)] == ["layer1", "layer2", "layer3", "layer4"]
    depth = layers.depth_map(model)
    assert depth["conv1.weight"] == 0 and depth["layer1.0.conv1.weight"] == 1 and depth["fc.weight"] == 5
    tiny = timm.create_model(CNN, pretrained=False, num_classes=3)
    assert len(layers.ordered_blocks(tiny)) >= 3


# ---- every strategy: what trains moves, what is frozen stays bitwise (weights and batch-norm buffers) -----------
STRATEGIES = [
    {"method": "full"},
    {"method": "freeze", "bottom": 0.5},
    {"method": "freeze", "top": 1},
    {"method": "freeze", "every": 2},
    {"method": "feature_extraction", "cache_features": False},
    {"method": "bitfit"},
    {"method": "lora", "r": 4},
    {"method": "gradual_unfreeze", "every_steps": 1},
]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("raw", STRATEGIES, ids=[json.dumps(r, separators=(",", ":")) for r in STRATEGIES])
def test_every_strategy_on_a_cnn_moves_exactly_what_trains(tmp_path: Path, image_folder: Path, raw: dict) -> None:
    check_strategy_moves_exactly_what_trains(tmp_path, image_folder, raw, CNN)


def check_strategy_moves_exactly_what_trains(tmp_path: Path, image_folder: Path, raw: dict, model_name: str) -> None:
    """Two optimiser steps: trainable parameters all move, frozen ones (and their buffers) stay bitwise, and the
    counts are what inspect shows."""
    recipe = load_recipe(image_recipe(tmp_path, image_folder, strategy=raw, optim={"weight_decay": 0.0},
                                      model={"name": model_name}))
    task = build_task(recipe)
    task.set_labels(sorted(COLOURS))
    features = task.featurize([_row(image_folder, label, i) for label in COLOURS for i in range(4)]).features
    seed_everything(0)
    strategy = make_strategy(recipe.strategy, recipe.task.type)
    model = strategy.apply(task.build_model())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen_modules = [name for name, module in model.named_modules()
                      if list(module.parameters(recurse=False)) and not any(p.requires_grad for p in module.parameters(recurse=False))]
    before = _state(model)
    groups = param_groups(model, recipe, strategy.trainable_candidates(model), strategy.depth_map(model),
                          strategy.default_head_lr)
    optimizer = make_optimizer(groups, recipe)
    strategy.set_train_mode(model)
    for step in range(1, 3):
        batch = task.collate(features, train=True)
        task.loss_sum(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if strategy.on_step_end(step, 0, False, model):
            strategy.set_train_mode(model)
    after = _state(model)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    moved_params = moved & {name for name, _ in model.named_parameters()}
    candidates = set(strategy.trainable_candidates(model))
    assert trainable and moved_params, "something must train and move"
    assert moved_params <= candidates, f"frozen but moved: {sorted(moved_params - candidates)[:5]}"
    assert trainable <= moved_params, f"trainable but still: {sorted(trainable - moved_params)[:5]}"
    still_frozen = [m for m in frozen_modules if not any(n.startswith(m + ".") for n in candidates)]
    assert (set(before) & {name for name, _ in model.named_parameters()}) - candidates or raw["method"] == "full"
    for module in still_frozen:  # frozen means frozen: running mean/var of a frozen batch norm never move
        changed = [n for n in moved if n.startswith(module + ".")]
        assert not changed, f"{module} is frozen but {changed} changed"
    counts = api.parameter_counts(model)  # what inspect shows: the parameters that train now
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad) >= sum(
        p.numel() for name, p in model.named_parameters() if name in trainable)
    assert counts["trainable"] + counts["frozen"] == sum(p.numel() for p in model.parameters())


def _row(folder: Path, label: str, i: int) -> Any:
    from tunelab.data.sources import Row

    return Row({"image": str(folder / label / f"{i}.png"), "label": label}, str(folder / label / f"{i}.png"), 0)


def test_strategies_that_need_tokens_are_refused_for_images(tmp_path: Path, image_folder: Path) -> None:
    for raw in ({"method": "prompt_tuning"}, {"method": "prefix_tuning"}, {"method": "adapters"}):
        with pytest.raises(RecipeError, match="reads pixels"):
            api.train(image_recipe(tmp_path, image_folder, strategy=raw), name="refused")
    assert not (tmp_path / "runs").exists()


# ---- a run end to end, reloaded in plain timm -------------------------------------------------------------------
def test_image_run_reloads_in_plain_timm_with_the_same_logits(tmp_path: Path, image_folder: Path) -> None:
    run = api.train(image_recipe(tmp_path, image_folder, strategy={"method": "lora", "r": 4}), name="lora")
    summary = run.summary
    assert summary["task"] == "image_classification" and summary["data"]["rows"]["train"] == 24
    plain = timm.create_model(f"local-dir:{run / 'final'}", pretrained=True).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())  # the adapter is merged in
    files = [image_folder / label / "13.png" for label in COLOURS]
    config = timm.data.resolve_data_config({}, model=plain)
    assert config["input_size"] == (3, 32, 32)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        logits = plain(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
    ours = torch.tensor([[r["scores"][name] for name in sorted(COLOURS)] for r in run.predict([str(f) for f in files])])
    assert torch.allclose(ours, logits.softmax(-1), atol=1e-5)  # stated tolerance: float32 merge of LoRA, batching
    assert api.evaluate(run, "test")["accuracy"] == summary["after"]["test"]["accuracy"]


def test_image_run_resumes_exactly(tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With augmentation on (random crops and flips draw from the RNGs), an interrupted run ends as the whole one."""
    recipe = image_recipe(tmp_path, image_folder, train={"max_steps": 6, "eval_every": 2})
    whole = api.train(recipe, name="whole")
    plain_steps = interrupt_after(monkeypatch, 2)
    with pytest.raises(RunError, match="interrupted at step 3"):
        api.train(recipe, name="cut")
    plain_steps()
    cut = api.train(recipe, name="cut", resume=True)
    from safetensors.torch import load_file

    one = load_file(whole / "checkpoints" / "step-0000006" / "model.safetensors")
    two = load_file(cut / "checkpoints" / "step-0000006" / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


# ---- bad images: named, or skipped and counted ------------------------------------------------------------------
def _bad_folder(root: Path, image_folder: Path) -> Path:
    for label in COLOURS:
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"{i}.png").write_bytes((image_folder / label / f"{i}.png").read_bytes())
    red = root / "red"
    (red / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 20)
    whole = (image_folder / "red" / "7.png").read_bytes()
    (red / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (red / "empty.png").write_bytes(b"")
    draw(COLOURS["red"], 1, size=2).save(red / "tiny.png")
    buffer = io.BytesIO()
    draw(COLOURS["red"], 2).convert("CMYK").save(buffer, format="JPEG")
    (red / "cmyk.jpg").write_bytes(buffer.getvalue())
    draw(COLOURS["green"], 3).convert("L").save(root / "green" / "grey.png")
    draw(COLOURS["blue"], 4).convert("RGBA").save(root / "blue" / "alpha.png")
    return root


def test_bad_images_are_named_by_file_or_skipped_and_counted(tmp_path: Path, image_folder: Path) -> None:
    folder = _bad_folder(tmp_path / "bad", image_folder)
    with pytest.raises(DataError) as refused:
        api.train(image_recipe(tmp_path, folder), name="strict")
    message = str(refused.value)  # the first split with bad rows stops the run, each row named with its problem
    reasons = {"corrupt.png": "cannot decode", "truncated.png": "cannot decode", "empty.png": "0 bytes", "tiny.png": "2x2"}
    named = [line for line in message.splitlines() if any(f"/{name}:" in line for name in reasons)]
    assert named and all(any(f"/{n}:" in line and why in line for n, why in reasons.items()) for line in named)
    run = api.train(image_recipe(tmp_path, folder, data={"on_bad_rows": "skip"}), name="lenient")
    data = run.summary["data"]
    assert sum(data["skipped"].values()) == 4
    assert sum(data["rows"].values()) == 18 + 3  # 3 converted images kept, 4 bad ones skipped
    assert data["converted"] == {"CMYK images converted to RGB": 1, "L images converted to RGB": 1,
                                 "RGBA images converted to RGB": 1}


def test_inspect_measures_image_activations_and_frozen_parts_keep_none() -> None:
    from rich.console import Console

    from tunelab.inspect import inspect_model

    def activations(strategy: str, *extra: str) -> int:
        counts = inspect_model(CNN, Console(file=io.StringIO()), strategy=strategy,
                               overrides=["task.type=image_classification", "task.pretrained=false",
                                          "task.image_size=32", *extra])
        return counts["memory"]["activations"]

    full, half, head = activations("full"), activations("freeze", "strategy.bottom=0.5"), activations("feature_extraction")
    assert full > half > head > 0  # autograd saves less the more of the bottom is frozen
    assert head < full / 100  # only the head's input and output remain
