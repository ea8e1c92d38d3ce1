"""Every strategy on tiny BERT, Llama and T5 models built from configs: exactly the right parameters change after real
AdamW steps, the counts match ``inspect``, impossible recipes are refused before training, and save -> load ->
predict round trips are exact (the head included), through tunelab and through plain peft / transformers."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)
from typer.testing import CliRunner

from tests.conftest import make_recipe
from tunelab import api
from tunelab.cli import app
from tunelab.errors import RecipeError
from tunelab.recipe import parse_recipe
from tunelab.api import warn_low_lr
from tunelab.strategies.registry import make_strategy
from tunelab.train.optim import head_rate, make_optimizer, param_groups

def options(raw: dict[str, Any], task_type: str = "classification", **sections: Any) -> Any:
    """A validated recipe around one strategy section (the model and data are not read)."""
    base = {"model": {"name": "unused"}, "task": {"type": task_type}, "data": {"train": "unused.csv"},
            "train": {"lr": 1e-2}, "optim": {"weight_decay": 0.0}}  # no decay: a parameter moves only by its gradient
    return parse_recipe(base | {"strategy": raw} | sections)


def tiny_bert(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    model.tunelab_new_params = ["classifier.bias", "classifier.weight"]  # as ClassificationTask.build_model records
    return model


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def t5_config(**changes: Any) -> T5Config:
    return T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                    decoder_start_token_id=0, dropout_rate=0.0, **changes)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 v1.1 checkpoint laid out as FLAN-T5's: the output layer saved apart from the shared embedding.

    transformers 5 always ties T5's lm_head to the shared embedding when it builds from a config (even with
    tie_word_embeddings=False) and unties it only when a checkpoint holds both with different values, as FLAN-T5's does.
    """
    folder = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    T5ForConditionalGeneration(t5_config(tie_word_embeddings=False)).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"] = torch.randn_like(weights["shared.weight"]) * 0.05
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


IDS = torch.randint(1, 100, (4, 9), generator=torch.Generator().manual_seed(0))
LOSSES: dict[str, Callable[[nn.Module], torch.Tensor]] = {
    "bert": lambda m: m(input_ids=IDS, attention_mask=torch.ones_like(IDS), labels=torch.tensor([0, 1, 0, 1])).loss,
    "llama": lambda m: m(input_ids=IDS, labels=IDS).loss,
    "t5": lambda m: m(input_ids=IDS, labels=IDS.flip(1)).loss,
}
TASK_TYPES = {"bert": "classification", "llama": "causal_lm", "t5": "seq2seq"}


@pytest.fixture(scope="module")
def build(t5_dir: Path) -> Callable[[str], nn.Module]:
    """A fresh tiny model of an architecture: bert (6 blocks with bert6), llama, t5 (untied, FLAN-T5 style)."""
    def make(arch: str) -> nn.Module:
        if arch == "t5":
            return T5ForConditionalGeneration.from_pretrained(t5_dir)
        return tiny_llama() if arch == "llama" else tiny_bert(6 if arch == "bert6" else 2)

    return make


@pytest.fixture(scope="module")
def prepared(build: Callable[[str], nn.Module]) -> Callable[..., tuple[nn.Module, Any, Any]]:
    """(model with the strategy applied, strategy, recipe) for an architecture and a strategy section."""
    def prepare(arch: str, raw: dict[str, Any], **sections: Any) -> tuple[nn.Module, Any, Any]:
        task_type = TASK_TYPES[arch.removesuffix("6")]
        recipe = options(raw, task_type, **sections)
        strategy = make_strategy(recipe.strategy, task_type)
        return strategy.apply(build(arch)), strategy, recipe

    return prepare


def steps(model: nn.Module, strategy: Any, recipe: Any, loss_fn: Callable, n: int,
          optimizer: Any = None) -> tuple[set[str], Any]:
    """``n`` real AdamW steps with tunelab's parameter groups; returns the names of the parameters that changed."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    if optimizer is None:
        groups = param_groups(model, recipe, strategy.trainable_candidates(model), strategy.depth_map(model))
        optimizer = make_optimizer(groups, recipe)
    strategy.set_train_mode(model)
    for _ in range(n):
        loss_fn(model).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}, optimizer


def trainable(model: nn.Module) -> set[str]:
    """Names of the parameters that require gradients now."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


CASES = [
    ("bert", {"method": "full"}),
    ("bert", {"method": "freeze", "bottom": 1}),
    ("bert", {"method": "freeze", "top": 0.5, "embeddings": False}),
    ("bert", {"method": "freeze", "indices": [-1], "patterns": ["*LayerNorm*"]}),
    ("bert", {"method": "freeze", "train_only": ["*.pooler.*"]}),
    ("bert", {"method": "feature_extraction"}),
    ("bert", {"method": "bitfit"}),
    ("bert", {"method": "lora", "r": 4}),
    ("bert", {"method": "dora", "target_modules": ["query", "key", "value", "dense"]}),
    ("bert", {"method": "ia3"}),
    ("bert", {"method": "prompt_tuning", "num_virtual_tokens": 4}),  # prefix_tuning: refused (see below)
    ("bert", {"method": "adapters", "bottleneck": 8}),
    ("bert", {"method": "adapters", "bottleneck": 8, "top": 1}),
    ("llama", {"method": "full"}),
    ("llama", {"method": "freeze", "bottom": 0.5}),
    ("llama", {"method": "freeze", "train_only": ["lm_head.*", "*.norm.*"]}),
    ("llama", {"method": "lora"}),
    ("llama", {"method": "dora"}),
    ("llama", {"method": "ia3"}),
    ("llama", {"method": "prefix_tuning", "num_virtual_tokens": 4}),
    ("llama", {"method": "prompt_tuning", "num_virtual_tokens": 4}),
    ("llama", {"method": "adapters", "bottleneck": 8}),
    ("t5", {"method": "full"}),
    ("t5", {"method": "freeze", "train_only": ["lm_head.*"]}),  # the seed's FLAN-T5 demo, in one line
    ("t5", {"method": "freeze", "bottom": 2}),
    ("t5", {"method": "lora"}),
    ("t5", {"method": "dora"}),
    ("t5", {"method": "ia3"}),
    ("t5", {"method": "prefix_tuning", "num_virtual_tokens": 4}),  # d_kv * heads != d_model here: token_dim handled
    ("t5", {"method": "prompt_tuning", "num_virtual_tokens": 4}),
    ("t5", {"method": "adapters", "bottleneck": 8}),
]


@pytest.mark.parametrize(("arch", "raw"), CASES, ids=[f"{a}-{json.dumps(r, separators=(',', ':'))}" for a, r in CASES])
def test_exactly_the_trainable_parameters_move(prepared: Callable, arch: str, raw: dict[str, Any]) -> None:
    model, strategy, recipe = prepared(arch, raw)
    expected = trainable(model)
    assert expected, "a strategy must train something"
    changed, _ = steps(model, strategy, recipe, LOSSES[arch], n=2)  # LoRA B, adapter 'up' start at 0: A moves at step 2
    assert changed == expected, (f"moved but frozen: {sorted(changed - expected)[:5]}; "
                                 f"trainable but still: {sorted(expected - changed)[:5]}")
    counts = api.parameter_counts(model)
    assert counts["trainable"] == sum(p.numel() for name, p in model.named_parameters() if name in changed)
    # each count against what training did, not against the others: frozen is what did not move
    assert counts["frozen"] == sum(p.numel() for name, p in model.named_parameters() if name not in changed)
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_what_each_strategy_trains(prepared: Callable) -> None:
    """Spot checks of the selection itself, by name, on top of 'what trains is what moves'."""
    model, _, _ = prepared("t5", {"method": "freeze", "train_only": ["lm_head.*"]})
    assert trainable(model) == {"lm_head.weight"}
    model, _, _ = prepared("bert", {"method": "freeze", "bottom": 1})
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in trainable(model))
    assert {"bert.encoder.layer.1.output.dense.weight", "classifier.weight"} <= trainable(model)
    model, _, _ = prepared("bert", {"method": "bitfit"})
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable(model))
    model, _, _ = prepared("bert", {"method": "lora"})
    assert {n.split(".")[-4] for n in trainable(model) if "lora_" in n} == {"query", "value"}
    assert model.tunelab_new_params == ["base_model.model.classifier.modules_to_save.default.bias",
                                        "base_model.model.classifier.modules_to_save.default.weight"]
    model, _, _ = prepared("llama", {"method": "adapters", "bottleneck": 8})
    assert {n.split(".adapter.")[0].split(".", 3)[-1] for n in trainable(model)} == {"mlp.down_proj"}
    model, _, _ = prepared("t5", {"method": "adapters", "bottleneck": 8})
    assert {n.split(".adapter.")[0].rsplit(".", 1)[-1] for n in trainable(model)} == {"wo"}


def test_feature_extraction_runs_backbone_in_eval_mode_and_head_in_train_mode() -> None:
    from tunelab.tasks.classification import replace_head

    model = tiny_bert()
    replace_head(model, [8], "gelu", 0.1, 2)
    model.tunelab_new_params = [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    strategy = make_strategy(options({"method": "feature_extraction"}).strategy)
    strategy.set_train_mode(strategy.apply(model))
    assert not model.bert.training and not model.dropout.training
    assert all(m.training for m in model.classifier.modules()), "the MLP head's own dropout trains"


@pytest.mark.parametrize("arch", ["bert", "llama", "t5"])
def test_gradual_unfreeze_adds_one_block_from_the_top_per_stage(prepared: Callable, arch: str) -> None:
    model, strategy, recipe = prepared(arch, {"method": "gradual_unfreeze", "every_steps": 1})
    depth = strategy.depth_map(model)
    top = max(depth.values())
    head = set(getattr(model, "tunelab_new_params", []))
    optimizer = None
    for stage in range(top):  # stages 0 .. N: the top part, then each block down to the first
        assert trainable(model) == {n for n, d in depth.items() if d >= top - stage} | head
        changed, optimizer = steps(model, strategy, recipe, LOSSES[arch], n=1, optimizer=optimizer)
        assert changed == trainable(model)
        assert strategy.on_step_end(stage + 1, 0, False, model) == (stage < top - 1)
    assert not any(depth[n] == 0 for n in trainable(model)), "embeddings stay frozen unless asked"
    resumed, again, _ = prepared(arch, {"method": "gradual_unfreeze", "every_steps": 1})
    again.load_state(strategy.state(), resumed)
    assert trainable(resumed) == trainable(model)


def test_gradual_unfreeze_by_epoch_and_with_embeddings(prepared: Callable) -> None:
    model, strategy, _ = prepared("bert", {"method": "gradual_unfreeze", "embeddings": True})
    assert not strategy.on_step_end(5, 0, False, model)
    for epoch in range(1, 4):
        assert strategy.on_step_end(5 * epoch, epoch, True, model)
    assert "bert.embeddings.word_embeddings.weight" in trainable(model)
    assert not strategy.on_step_end(20, 4, True, model)


@pytest.mark.parametrize("wrap", [None, {"method": "lora"}])
def test_layer_lr_decay_groups(wrap: dict[str, Any] | None) -> None:
    recipe = options(wrap or {"method": "full"}, optim={"layer_lr_decay": 0.5, "head_lr": 0.1, "weight_decay": 0.0})
    strategy = make_strategy(recipe.strategy, "classification")
    model = strategy.apply(tiny_bert())
    groups = param_groups(model, recipe, strategy.trainable_candidates(model), strategy.depth_map(model))
    rate = {name: g["lr"] for g in groups for name in g["names"]}
    prefix = "base_model.model." if wrap else ""
    lora = ".lora_A.default" if wrap else ""
    assert rate[f"{prefix}bert.encoder.layer.1.attention.self.query{lora}.weight"] == 1e-2 * 0.5
    assert rate[f"{prefix}bert.encoder.layer.0.attention.self.query{lora}.weight"] == 1e-2 * 0.25
    head = "classifier.modules_to_save.default" if wrap else "classifier"
    assert rate[f"{prefix}{head}.weight"] == 0.1
    if not wrap:
        assert rate["bert.embeddings.word_embeddings.weight"] == 1e-2 * 0.5**3
        assert rate["bert.pooler.dense.weight"] == 1e-2


@pytest.mark.parametrize(("arch", "first", "last", "blocks"), [
    ("llama", "model.embed_tokens.weight", "lm_head.weight", 2),
    ("t5", "shared.weight", "lm_head.weight", 4),  # encoder blocks, then decoder blocks
])
def test_layer_lr_decay_on_decoders(prepared: Callable, arch: str, first: str, last: str, blocks: int) -> None:
    model, strategy, recipe = prepared(arch, {"method": "full"}, optim={"layer_lr_decay": 0.5, "weight_decay": 0.0})
    groups = param_groups(model, recipe, strategy.trainable_candidates(model), strategy.depth_map(model))
    rate = {name: g["lr"] for g in groups for name in g["names"]}
    assert rate[last] == 1e-2 and rate[first] == 1e-2 * 0.5 ** (blocks + 1)


def test_ia3_vectors_get_no_weight_decay(prepared: Callable) -> None:
    model, strategy, recipe = prepared("bert", {"method": "ia3"}, optim={"weight_decay": 0.1})
    groups = param_groups(model, recipe, strategy.trainable_candidates(model), strategy.depth_map(model))
    assert all(g["weight_decay"] == 0.0 for g in groups if any(".ia3_l." in n for n in g["names"]))


@pytest.mark.parametrize(("raw", "optim", "head"), [
    ({"method": "full"}, {}, 1e-2),  # the head learns with the backbone at train.lr
    ({"method": "feature_extraction"}, {}, 1e-1),  # the head alone over a frozen pooler: the strategy's default
    ({"method": "lora"}, {}, 3e-2),
    ({"method": "bitfit"}, {"head_lr": 0.5}, 0.5),  # the recipe's own rate wins
])
def test_head_rate_defaults_to_the_strategy_s(prepared: Callable, raw: dict[str, Any], optim: dict, head: float) -> None:
    model, strategy, recipe = prepared("bert", raw, optim=optim)
    groups = param_groups(model, recipe, strategy.trainable_candidates(model), strategy.depth_map(model),
                          strategy.default_head_lr)
    rate = {name.rsplit(".", 1)[-1] if "classifier" in name else name: g["lr"]
            for g in groups for name in g["names"] if "classifier" in name}
    assert rate == {"weight": head, "bias": head}
    assert head_rate(recipe, strategy.default_head_lr) == head


@pytest.mark.parametrize(("raw", "lr", "warned"), [
    ({"method": "lora"}, 1e-4, True), ({"method": "lora"}, 1e-3, False), ({"method": "full"}, 1e-6, False),
])
def test_a_rate_far_below_the_method_s_is_warned(raw: dict[str, Any], lr: float, warned: bool) -> None:
    recipe = options(raw, train={"lr": lr})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_low_lr(recipe)
    assert bool([w for w in caught if "--set train.lr=0.001" in str(w.message)]) == warned


# ---- refusals, before any training ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "raw", "says"), [
    ("bert6", {"method": "freeze", "bottom": 9}, r"6 blocks \(bert\.encoder\.layer\.0-5\).*bottom must be 0\.\.6"),
    ("bert6", {"method": "freeze", "top": 1.5}, r"not a usable fraction.*\(0, 1\]"),
    ("bert6", {"method": "lora", "target_modules": ["q_proj", "value"]},
     r"'q_proj' names no module.*dense, key, query, value"),
    ("bert6", {"method": "ia3", "feedforward_modules": ["key"], "target_modules": ["value"]}, r"must also be in"),
    ("bert6", {"method": "freeze", "train_only": ["lm_head.*"]}, r"'lm_head.\*' matches no parameter"),
    ("bert6", {"method": "adapters", "indices": [7]}, r"index 7 .*does not exist"),
    ("llama", {"method": "feature_extraction"}, r"train_only: \['lm_head.\*'\]"),
    ("llama", {"method": "bitfit"}, r"no bias parameters"),
    ("t5", {"method": "freeze", "bottom": 1.0, "embeddings": True, "patterns": ["lm_head.*", "*final_layer_norm*"]},
     r"nothing would train"),
])
def test_impossible_recipes_are_refused_saying_what_exists(prepared: Callable, arch: str, raw: dict[str, Any],
                                                          says: str) -> None:
    with pytest.raises(RecipeError, match=says):
        prepared(arch, raw)


def test_train_only_on_a_tied_output_layer_explains_why() -> None:
    recipe = options({"method": "freeze", "train_only": ["lm_head.*"]}, "seq2seq")
    tied = T5ForConditionalGeneration(t5_config())  # built from a config, transformers 5 ties lm_head to shared
    with pytest.raises(RecipeError, match="ties its output layer to its input embeddings"):
        make_strategy(recipe.strategy, "seq2seq").apply(tied)


def test_refused_before_any_work(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, strategy={"method": "freeze", "bottom": 9})
    with pytest.raises(RecipeError, match=r"2 blocks \(bert\.encoder\.layer\.0-1\)"):
        api.train(recipe, name="bad")
    assert not (tmp_path / "runs" / "bad").exists()


# ---- counts agree with `tunelab inspect` -------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "extra"), [
    ("freeze", {"bottom": 0.5}), ("feature_extraction", {}), ("lora", {}), ("adapters", {"bottleneck": 8}),
    ("gradual_unfreeze", {}),
])
def test_inspect_counts_what_trains(tiny_bert_dir: Path, method: str, extra: dict[str, Any]) -> None:
    from tunelab.inspect import inspect_model
    from tunelab.models import load_tokenizer
    from tunelab.tasks import build_task

    out = io.StringIO()
    sets = [f"strategy.{key}={value}" for key, value in extra.items()]
    shown = inspect_model(str(tiny_bert_dir), Console(file=out, width=200), strategy=method, overrides=sets)
    recipe = options({"method": method, **extra}, model={"name": str(tiny_bert_dir)},
                     data={"train": "unused.csv", "labels": ["0", "1"]})
    strategy = make_strategy(recipe.strategy, "classification")
    model = strategy.apply(build_task(recipe, load_tokenizer(str(tiny_bert_dir))).build_model())
    moved, _ = steps(model, strategy, recipe, LOSSES["bert"], n=2)
    assert shown["trainable"] == sum(p.numel() for name, p in model.named_parameters() if name in moved)
    assert f"{shown['trainable']:,}" in out.getvalue()


# ---- where each PEFT method runs, for the locked versions (requirements.lock) --------------------------------------
# Every method in CASES runs on BERT classification, Llama causal LM and T5 seq2seq, except prefix tuning on a
# classifier: transformers 5.24 took past_key_values out of the encoders' forward, and peft needs it there.
def test_prefix_tuning_refusal_agrees_with_peft() -> None:
    """Our up-front refusal matches what peft itself does on the same classes: refuse BERT, run Llama and T5."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from tunelab.strategies.peft_methods import prefix_refusal

    assert "prompt_tuning" in prefix_refusal(BertForSequenceClassification, "classification", "tiny")
    assert prefix_refusal(LlamaForCausalLM, "causal_lm", "tiny") is None
    assert prefix_refusal(T5ForConditionalGeneration, "seq2seq", "tiny") is None
    wrapped = get_peft_model(tiny_bert(), PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=4))
    with pytest.raises(ValueError, match="past key values"):
        wrapped(input_ids=torch.tensor([[1, 2, 3]]))


def test_prefix_tuning_on_an_encoder_is_refused_before_any_work(tmp_path: Path, tiny_bert_dir: Path,
                                                                toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, strategy={"method": "prefix_tuning"})
    with pytest.raises(RecipeError, match=r"prefix_tuning cannot run on .*BertForSequenceClassification.*prompt_tuning"):
        api.train(recipe, name="pt")
    assert not (tmp_path / "runs").exists()
    shown = CliRunner().invoke(app, ["inspect", str(tiny_bert_dir), "--strategy", "prefix_tuning"])
    assert shown.exit_code == 2 and "use prompt_tuning" in shown.output.lower().replace("\n", " ")


# ---- save -> load -> predict, and export --merge ------------------------------------------------------------------
ROUND_TRIPS = [
    ({"method": "full"}, {}), ({"method": "freeze", "bottom": 1}, {"hidden": [16]}),
    ({"method": "feature_extraction"}, {}), ({"method": "bitfit"}, {}), ({"method": "lora"}, {}),
    ({"method": "dora"}, {"hidden": [16]}), ({"method": "ia3"}, {}),
    ({"method": "prompt_tuning", "num_virtual_tokens": 4}, {}),
    ({"method": "adapters", "bottleneck": 8}, {"hidden": [16]}), ({"method": "gradual_unfreeze", "every_steps": 1}, {}),
]
TEXTS = ["a great and charming film", "dull, boring and flat", "the plot was quite messy"]


@pytest.mark.parametrize(("raw", "head"), ROUND_TRIPS, ids=[r["method"] + ("+mlp" * bool(h)) for r, h in ROUND_TRIPS])
def test_save_load_predict_is_exact(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path, raw: dict, head: dict) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, strategy=raw, task={"head": head},
                         train={"max_steps": 2, "lr": 2e-2}, eval={"before": True})
    run = api.train(recipe, name="rt")
    summary = json.loads((run / "summary.json").read_text())
    after = summary["after"]["test"]
    assert after["loss"] != summary["before"]["test"]["loss"], "training must change the outputs for this to mean much"
    assert api.evaluate(run, "test")["loss"] == after["loss"]  # same features, same batches: bitwise the same model
    info = json.loads((run / "final" / "tunelab.json").read_text())
    loaded = api.load(run)
    batch = AutoTokenizer.from_pretrained(run / "final")(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = loaded.model(**batch).logits
        plain = _plain_load(run / "final", tiny_bert_dir, info)
        if plain is not None:  # the ecosystem's own loader gives the same outputs as tunelab's
            assert torch.equal(plain(**batch).logits, ours)
        exported = CliRunner().invoke(app, ["export", str(run), "--merge"])
        if info["format"] == "adapters" or info.get("head") or raw["method"] in ("prefix_tuning", "prompt_tuning"):
            assert exported.exit_code == 2 and "cannot" in exported.output and not (run / "merged").exists()
            return
        assert exported.exit_code == 0, exported.output
        merged = AutoModelForSequenceClassification.from_pretrained(run / "merged").eval()
        assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
        assert merged.config.id2label == {0: "neg", 1: "pos"}
        assert torch.allclose(merged(**batch).logits, ours, atol=1e-5)


def _plain_load(final: Path, base_dir: Path, info: dict) -> nn.Module | None:
    """final/ through plain transformers or peft, where the format allows it."""
    if info.get("head") or info["format"] == "adapters":
        return None
    if info["format"] == "hf":
        return AutoModelForSequenceClassification.from_pretrained(final).eval()
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    return PeftModel.from_pretrained(base, final).eval()


def test_a_saved_adapter_names_a_catalog_base_model_by_its_hub_id(tmp_path: Path) -> None:
    """peft records the base model's folder; inside site-packages that path exists on no other machine."""
    from tunelab.models.catalog import CATALOG, packaged_file

    model = tiny_bert()
    model.name_or_path = str(packaged_file("minilm-l6"))  # as from_pretrained sets it
    strategy = make_strategy(options({"method": "lora"}).strategy)
    strategy.save_model(strategy.apply(model), tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == CATALOG["minilm-l6"]["hub_id"]
