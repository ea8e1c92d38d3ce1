"""Every speed-up gives the plain path's result and can be switched off in the recipe. No timings are asserted.

Tolerances: the caches compute the frozen part in other batches (other padding widths) than the plain path, which
moves float32 results by ~1e-6; weights after a few steps are compared at 1e-5, metrics exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_recipe
from tunelab import api
from tunelab.recipe import load_recipe
from tunelab.strategies.registry import make_strategy
from tunelab.tasks import build_task
from tunelab.train import feature_cache

ATOL = 1e-5


def final_weights(run: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    weights = load_file(run / "final" / "model.safetensors")
    return {k: v for k, v in weights.items() if k.startswith(prefix)}


def validation_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "validation"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_same_run(a: Path, b: Path, prefix: str = "") -> None:
    """Same trained weights (within ATOL), same validation metrics at every evaluation, same final test metrics."""
    wa, wb = final_weights(a, prefix), final_weights(b, prefix)
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= ATOL, f"weights differ by {worst}"
    va, vb = validation_records(a), validation_records(b)
    assert [r["step"] for r in va] == [r["step"] for r in vb]
    for ra, rb in zip(va, vb):
        assert ra["accuracy"] == rb["accuracy"]
        assert ra["loss"] == pytest.approx(rb["loss"], abs=ATOL)
    assert summary(a)["after"]["test"]["accuracy"] == summary(b)["after"]["test"]["accuracy"]


def moved(run: Path, start_dir: Path, name: str) -> float:
    """How far one trained weight moved from the checkpoint: the comparison must be about a run that learnt."""
    start = load_file(start_dir / "model.safetensors")
    return (final_weights(run)[f"bert.{name}"] - start[name]).abs().max().item()


# ---- feature extraction: the head trains on cached backbone outputs ---------------------------------------------------

def test_feature_cache_equals_plain_path(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    # an MLP head with dropout: equal results also show the cache keeps the random stream in step
    def run(cache: bool, name: str) -> Path:
        recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, strategy={"method": "feature_extraction",
                             "cache_features": cache}, task={"head": {"hidden": [16], "dropout": 0.3}},
                             train={"lr": 1e-2})
        return api.train(recipe, name=name)

    cached, plain = run(True, "cached"), run(False, "plain")
    assert summary(cached)["speedups"]["head_cache"].startswith("on:")
    assert "head_cache" not in summary(plain)["speedups"]  # switched off in the recipe
    assert_same_run(cached, plain, prefix="classifier")
    first = next(iter(final_weights(plain, "classifier").values()))
    assert first.abs().max() > 0  # the head exists and was saved


# ---- freeze with a cached boundary: only the trainable blocks run after the first pass ------------------------------

def freeze_recipe(tmp_path: Path, model_dir: Path, data: Path, cache: bool, **strategy: object) -> Path:
    return make_recipe(tmp_path, model_dir, data, strategy={"method": "freeze", "bottom": 1, "cache_boundary": cache,
                                                            **strategy})


def test_boundary_cache_equals_plain_path_with_frozen_blocks_in_eval_mode(
        tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = api.train(freeze_recipe(tmp_path, tiny_bert_dir, toy_csv, True), name="cached")
    assert summary(cached)["speedups"]["boundary_cache"].startswith("on: hidden states entering block 1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise feature_cache.Unsupported("forced off by the test")

    # the plain path of the same recipe (frozen blocks in eval mode, every block run every step); the trainable
    # block keeps its dropout, so equal results also show the cache keeps the random stream in step
    monkeypatch.setattr(feature_cache, "build_cache", refuse)
    plain = api.train(freeze_recipe(tmp_path, tiny_bert_dir, toy_csv, True), name="plain")
    assert summary(plain)["speedups"]["boundary_cache"] == "off: forced off by the test"
    assert_same_run(cached, plain)
    assert moved(cached, tiny_bert_dir, "encoder.layer.1.output.dense.weight") > 1e-4
    assert moved(cached, tiny_bert_dir, "encoder.layer.0.output.dense.weight") == 0.0


def test_boundary_cache_off_keeps_dropout_in_frozen_blocks(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    def modes(cache: bool) -> tuple[bool, bool, bool]:
        recipe = load_recipe(freeze_recipe(tmp_path, tiny_bert_dir, toy_csv, cache))
        strategy = make_strategy(recipe.strategy, recipe.task.type)
        task = build_task(recipe, _tokenizer(tiny_bert_dir))
        task.fit_labels(_rows())
        model = strategy.apply(task.build_model())
        strategy.set_train_mode(model)
        bert = model.bert
        return bert.embeddings.training, bert.encoder.layer[0].training, bert.encoder.layer[1].training

    assert modes(True) == (False, False, True)
    assert modes(False) == (True, True, True)


def test_boundary_cache_refuses_a_trainable_stem(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    model, task, features = _frozen_model(tmp_path, tiny_bert_dir, toy_csv, embeddings=False)
    with pytest.raises(feature_cache.Unsupported, match="embeddings trains"):
        feature_cache.build_cache("boundary", model, [features], task, 16, torch.device("cpu"))


def test_cache_skips_the_frozen_part_and_restores_the_model(tiny_bert_dir: Path, toy_csv: Path, tmp_path: Path) -> None:
    model, task, features = _frozen_model(tmp_path, tiny_bert_dir, toy_csv)
    cache = feature_cache.build_cache("boundary", model, [features], task, 16, torch.device("cpu"))
    calls = {"stem": 0, "block0": 0}
    model.bert.embeddings.register_forward_hook(lambda *a: calls.__setitem__("stem", calls["stem"] + 1))
    model.bert.encoder.layer[0].register_forward_hook(lambda *a: calls.__setitem__("block0", calls["block0"] + 1))
    batch = {k: v for k, v in task.collate(features[:12]).items() if k != "labels"}
    model.eval()
    with cache.active(model) as replay, torch.no_grad():
        cached = replay(**batch).logits
    assert calls == {"stem": 0, "block0": 0}
    with torch.no_grad():
        plain = model(**batch).logits  # the whole model again after the block
    assert calls == {"stem": 1, "block0": 1}
    assert torch.allclose(cached, plain, atol=ATOL)
    assert len(cache.store.index) == len({tuple(f["input_ids"]) for f in features})


def _frozen_model(tmp_path: Path, model_dir: Path, data: Path, **strategy: object) -> tuple:
    """A tiny BERT prepared by the freeze strategy (bottom block frozen), its task and features of toy rows."""
    recipe = load_recipe(freeze_recipe(tmp_path, model_dir, data, True, **strategy))
    task = build_task(recipe, _tokenizer(model_dir))
    task.fit_labels(_rows())
    model = make_strategy(recipe.strategy, recipe.task.type).apply(task.build_model())
    return model, task, task.featurize(_rows()).features


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _rows() -> list[Any]:
    from tests.conftest import toy_rows
    from tunelab.data.sources import Row

    return [Row({"review": r["review"], "sentiment": r["sentiment"]}, "toy", i) for i, r in enumerate(toy_rows(40))]


# ---- threads and torch.compile ---------------------------------------------------------------------------------------

def test_threads_follow_the_recipe_and_default_to_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.train import speed

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert speed.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(speed.usable_cores() * 2))  # more processes than cores
        assert speed.set_threads(None) == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert speed.set_threads(None) == speed.usable_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_a_single_process_follows_omp_num_threads_and_a_launched_one_shares_the_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS is the user's word for one process; under torchrun (which sets it to 1 when unset) the cores
    are shared out instead; the recipe's train.threads beats both."""
    from tunelab.train import speed

    before = torch.get_num_threads()
    cores = speed.usable_cores()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 3))  # a count no default gives
        assert speed.set_threads(None) == cores + 3 == torch.get_num_threads()
        assert speed.set_threads(2) == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: ignored
        assert speed.set_threads(None) == cores
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert speed.set_threads(None) == max(1, cores // 2)
    finally:
        torch.set_num_threads(before)


def test_allocator_setting_is_off_by_default_and_switchable(tmp_path: Path, tiny_bert_dir: Path,
                                                            toy_csv: Path) -> None:
    """Off unless the recipe turns it on (it slowed training 1.2-1.75x for 5-13% less peak memory)."""
    from tunelab.train import speed

    model = torch.nn.Linear(2, 2)
    threads = torch.get_num_threads()
    try:
        default = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv))
        assert default.train.release_memory is False
        assert "allocator" not in speed.configure(default, model)
        on = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"release_memory": True}))
        glibc = speed.release_large_frees()  # False where libc has no mallopt (macOS, musl)
        assert ("allocator" in speed.configure(on, model)) == glibc
    finally:
        torch.set_num_threads(threads)


# ---- weight drift keeps digests, not copies, of the weights no optimiser holds -----------------------------------

def test_drift_with_fixed_digests_equals_full_copies_and_catches_a_moved_frozen_weight() -> None:
    from tunelab.evaluate.drift import Fixed, snapshot, weight_drift

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    fixed = {"0.weight", "0.bias"}
    full, lean = snapshot(model), snapshot(model, fixed)
    assert isinstance(lean["0.weight"], Fixed) and isinstance(lean["1.weight"], torch.Tensor)
    with torch.no_grad():
        model[1].weight.add_(0.5)
    assert weight_drift(lean, model, {"0.weight": 0, "1.weight": 1}) == weight_drift(full, model, {"0.weight": 0, "1.weight": 1})
    with torch.no_grad():
        model[0].bias[0] += 1.0  # a "frozen" weight moved: the digest shows it
    drift = weight_drift(lean, model)
    assert drift["fixed_changed"] == ["0.bias"] and drift["tensors_changed"] == 2


def test_compile_is_off_by_default_and_gives_the_eager_logits(tmp_path: Path, tiny_bert_dir: Path,
                                                                toy_csv: Path) -> None:
    """Only the function is compared (eval mode): in train mode inductor draws dropout masks from its own generator,
    so a compiled run follows another random stream than an eager one (same distribution, not the same masks)."""
    from tunelab.train import speed

    model, task, features = _frozen_model(tmp_path, tiny_bert_dir, toy_csv)
    model.eval()
    batch = {k: v for k, v in task.collate(features[:4]).items() if k != "labels"}
    with torch.no_grad():
        eager = model(**batch).logits
    recipe = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv))
    threads = torch.get_num_threads()
    try:
        assert "compile" not in speed.configure(recipe, model)  # off by default: nothing compiled
        assert model._compiled_call_impl is None
        on = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"compile": True}))
        assert speed.configure(on, model)["compile"].startswith("on")
        with torch.no_grad():
            compiled = model(**batch).logits
    finally:
        torch.set_num_threads(threads)
    assert model._compiled_call_impl is not None
    assert torch.allclose(compiled, eager, atol=ATOL)
