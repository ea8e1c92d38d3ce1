"""Layer selection on tiny models built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from tunelab.errors import ModelError, RecipeError
from tunelab.strategies.layers import (
    depth_map,
    describe_blocks,
    find_block_stacks,
    match_params,
    ordered_blocks,
    pick_blocks,
    select_blocks,
)


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64
    )
    return BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def t5() -> nn.Module:
    config = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=2, num_heads=2)
    return T5ForConditionalGeneration(config)


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=2, n_positions=64))


@pytest.fixture(scope="module")
def lora_bert() -> nn.Module:
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64
    )
    return get_peft_model(BertForSequenceClassification(config), LoraConfig(target_modules=["query", "value"]))


# --- finding the stacks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("bert", [("bert.encoder.layer", 6)]),
        ("llama", [("model.layers", 4)]),
        ("t5", [("encoder.block", 3), ("decoder.block", 2)]),
        ("gpt2", [("transformer.h", 3)]),
        ("lora_bert", [("base_model.model.bert.encoder.layer", 6)]),
    ],
)
def test_find_block_stacks(request: pytest.FixtureRequest, fixture: str, expected: list[tuple[str, int]]) -> None:
    model = request.getfixturevalue(fixture)
    stacks = find_block_stacks(model)
    assert [(s.name, len(s.blocks)) for s in stacks] == expected
    for stack in stacks:
        assert stack.blocks is model.get_submodule(stack.name)


def test_t5_order_is_encoder_then_decoder(t5: nn.Module) -> None:
    names = [name for name, _ in ordered_blocks(t5)]
    assert names == ["encoder.block.0", "encoder.block.1", "encoder.block.2", "decoder.block.0", "decoder.block.1"]
    assert all(block is t5.get_submodule(name) for name, block in ordered_blocks(t5))
    assert describe_blocks(t5) == "encoder.block.0-2 then decoder.block.0-1"


def test_peft_names_resolve(lora_bert: nn.Module) -> None:
    names = [name for name, _ in ordered_blocks(lora_bert)]
    assert names[0] == "base_model.model.bert.encoder.layer.0"
    assert names[-1] == "base_model.model.bert.encoder.layer.5"
    assert all(block is lora_bert.get_submodule(name) for name, block in ordered_blocks(lora_bert))


def test_no_stack_raises_model_error_naming_the_class() -> None:
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="Sequential"):
        find_block_stacks(mlp)

    class Mixed(nn.Module):  # a ModuleList without attention is not a transformer stack
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    with pytest.raises(ModelError, match="Mixed"):
        ordered_blocks(Mixed())


# --- select_blocks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"bottom": 3}, [0, 1, 2]),
        ({"bottom": 0}, []),
        ({"bottom": 6}, [0, 1, 2, 3, 4, 5]),
        ({"bottom": 1}, [0]),  # int 1 is one block ...
        ({"bottom": 1.0}, [0, 1, 2, 3, 4, 5]),  # ... float 1.0 is all of them
        ({"bottom": 0.5}, [0, 1, 2]),
        ({"bottom": 0.25}, [0, 1]),  # 1.5 rounds half up to 2
        ({"bottom": 0.01}, [0]),  # a positive fraction picks at least one block
        ({"top": 2}, [4, 5]),
        ({"top": 0.5}, [3, 4, 5]),
        ({"bottom": 1, "top": 1}, [0, 5]),  # bottom + top is their union
        ({"every": 2}, [0, 2, 4]),
        ({"every": 4}, [0, 4]),
        ({"every": 10}, [0]),
        ({"indices": [0, -1, 2, 2]}, [0, 2, 5]),
        ({"indices": []}, []),
    ],
)
def test_select_blocks(kwargs: dict, expected: list[int]) -> None:
    assert select_blocks(6, **kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"bottom": 9}, "bottom must be 0..6 or a fraction in (0, 1]"),
        ({"top": -1}, "top must be 0..6"),
        ({"bottom": 1.5}, "fraction in (0, 1]"),
        ({"bottom": 0.0}, "fraction in (0, 1]"),
        ({"top": -0.5}, "fraction in (0, 1]"),
        ({"bottom": True}, "neither a count nor a fraction"),
        ({"bottom": "3"}, "neither a count nor a fraction"),
        ({"every": 0}, "every = 0 must be an integer >= 1"),
        ({"every": True}, "every = True must be an integer >= 1"),
        ({"indices": [6]}, "index 6 in indices does not exist"),
        ({"indices": [-7]}, "index -7 in indices does not exist"),
        ({"indices": [False]}, "index False in indices does not exist"),
        ({"indices": 3}, "indices = 3 must be a list"),
        ({"bottom": 2, "every": 2}, "bottom, every were given together"),
        ({"indices": [1], "top": 1}, "top, indices were given together"),
        ({}, "no selector was given"),
    ],
)
def test_select_blocks_errors_say_what_exists(kwargs: dict, fragment: str) -> None:
    with pytest.raises(RecipeError) as caught:
        select_blocks(6, blocks_desc="bert.encoder.layer.0-5", **kwargs)
    message = str(caught.value)
    assert fragment in message
    assert "the model has 6 blocks (bert.encoder.layer.0-5)" in message


def test_pick_blocks_quotes_real_block_names(bert: nn.Module, t5: nn.Module) -> None:
    assert [name for name, _ in pick_blocks(bert, top=0.5)] == [f"bert.encoder.layer.{i}" for i in (3, 4, 5)]
    assert [name for name, _ in pick_blocks(t5, bottom=4)][-1] == "decoder.block.0"
    with pytest.raises(RecipeError, match=r"6 blocks \(bert\.encoder\.layer\.0-5\): bottom = 9 .*bottom must be 0\.\.6"):
        pick_blocks(bert, bottom=9)
    with pytest.raises(RecipeError, match=r"5 blocks \(encoder\.block\.0-2 then decoder\.block\.0-1\)"):
        pick_blocks(t5, indices=[5])


# --- match_params ---------------------------------------------------------------------------


def test_match_params_globs(bert: nn.Module, llama: nn.Module) -> None:
    biases = match_params(bert, ["*.bias"])
    assert biases and all(name.endswith(".bias") for name in biases)
    assert len(biases) == sum(1 for name, _ in bert.named_parameters() if name.endswith(".bias"))
    both = match_params(bert, ["classifier.*", "bert.pooler.*"])
    assert both == ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]
    assert match_params(llama, ["model.layers.0.self_attn.q_proj.weight"]) == ["model.layers.0.self_attn.q_proj.weight"]


def test_match_params_on_peft_model_accepts_unwrapped_names(lora_bert: nn.Module) -> None:
    hits = match_params(lora_bert, ["classifier.*"])
    assert hits and all(name.startswith("base_model.model.classifier") for name in hits)
    lora = match_params(lora_bert, ["*lora_A*"])
    assert len(lora) == 12  # query and value in each of 6 layers


def test_match_params_typo_suggests_real_names(bert: nn.Module) -> None:
    with pytest.raises(RecipeError) as caught:
        match_params(bert, ["*.bias", "bert.pooler.dense.wieght"])
    message = str(caught.value)
    assert "'bert.pooler.dense.wieght'" in message
    assert "did you mean" in message and "bert.pooler.dense.weight" in message


def test_match_params_nothing_close_lists_examples(bert: nn.Module) -> None:
    with pytest.raises(RecipeError) as caught:
        match_params(bert, ["zzz"])
    assert "bert.embeddings.word_embeddings.weight" in str(caught.value)


# --- depth_map ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "first", "head"),
    [
        ("bert", "bert.embeddings.word_embeddings.weight", "classifier.weight"),
        ("llama", "model.embed_tokens.weight", "lm_head.weight"),
        ("gpt2", "transformer.wte.weight", "transformer.ln_f.weight"),
        ("t5", "shared.weight", "decoder.final_layer_norm.weight"),
        ("lora_bert", "base_model.model.bert.embeddings.word_embeddings.weight", "base_model.model.classifier.weight"),
    ],
)
def test_depth_map(request: pytest.FixtureRequest, fixture: str, first: str, head: str) -> None:
    model = request.getfixturevalue(fixture)
    blocks = ordered_blocks(model)
    depths = depth_map(model)
    n = len(blocks)
    assert set(depths) == {name for name, _ in model.named_parameters()}
    assert depths[first] == 0
    assert depths[head] == n + 1
    for depth, (block_name, _) in enumerate(blocks, start=1):
        owned = [name for name in depths if name.startswith(block_name + ".")]
        assert owned and all(depths[name] == depth for name in owned)
    block_depths = [d for name, d in depths.items() if 1 <= d <= n]
    assert block_depths == sorted(block_depths)  # monotonic in parameter order
    assert set(block_depths) == set(range(1, n + 1))


def test_depth_map_t5_encoder_norm_sits_with_last_encoder_block(t5: nn.Module) -> None:
    depths = depth_map(t5)
    assert depths["encoder.block.2.layer.0.SelfAttention.q.weight"] == 3
    assert depths["encoder.final_layer_norm.weight"] == 3
    assert depths["decoder.block.0.layer.1.EncDecAttention.q.weight"] == 4
    assert depths["decoder.final_layer_norm.weight"] == 6
