"""Faster generation leaves outputs unchanged: adapters merged for generation (and put back bit for bit), greedy
decoding in which finished rows leave the batch gives ``model.generate``'s very strings, on a config-built Llama
with LoRA and on the real SmolLM2 (marked real)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_generation import smol_tokenizer_dir, tiny_llama_dir  # noqa: F401 (fixtures)
from tunelab.recipe import GenerateConfig
from tunelab.tasks import decoding
from tunelab.tasks.generation import generate, generation_kwargs

VERSES = ["In the beginning God created the heavens and the earth.", "Jesus wept.",
          "The Lord is my shepherd; I shall not want.", "Love is patient and is kind.",
          "For God so loved the world, that he gave his one and only Son, that whoever believes in him should not "
          "perish, but have eternal life.", "Rejoice always.", "Pray without ceasing.",
          "Now faith is assurance of things hoped for, proof of things not seen.", "Be still, and know that I am God.",
          "Your word is a lamp to my feet, and a light for my path.", "Do not be afraid.",
          "He makes me lie down in green pastures. He leads me beside still waters."]


def lora_model(folder: Path, targets: list[str], std: float) -> Any:
    """The folder's causal LM with LoRA on ``targets`` and nonzero B matrices (an adapter that changes outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=targets))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)
    return model.eval()


def prompts_of(tokenizer: Any, n: int, seed: int = 0) -> list[list[int]]:
    """Chat prompts of varied lengths (1 to 40 words), in no particular order."""
    rng = random.Random(seed)
    words = " ".join(VERSES).split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(n)]
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for t in texts]


def test_merged_adapters_match_and_are_put_back_bit_for_bit(tiny_llama_dir: Path) -> None:
    model = lora_model(tiny_llama_dir, ["q_proj", "v_proj", "up_proj"], std=0.05)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = {name: (param.data_ptr(), param.detach().clone()) for name, param in model.named_parameters()}
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with decoding.merged_adapters(model) as merged:
            lora = [m for m in merged.modules() if hasattr(m, "merged_adapters") and m.merged_adapters]
            assert len(lora) == 2 * 3  # every adapted layer of both blocks is merged while the block runs
            folded = merged(input_ids=ids).logits
            base = merged.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
            assert not torch.equal(base, before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"][1])
        after = model(input_ids=ids).logits
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)  # merging only reorders the float arithmetic
    assert torch.equal(after, plain)  # the unmerged model is back exactly
    for name, param in model.named_parameters():
        assert param.data_ptr() == before[name][0] and torch.equal(param, before[name][1]), name
    assert not any(getattr(m, "merged_adapters", []) for m in model.modules())


@pytest.mark.parametrize("options", [{}, {"repetition_penalty": 1.3}])
def test_greedy_with_rows_leaving_equals_generate(tiny_llama_dir: Path, options: dict[str, Any]) -> None:
    """Same strings as model.generate on the unmerged model, for a stop string that really ends rows early."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = lora_model(tiny_llama_dir, ["q_proj", "v_proj", "up_proj"], std=0.05)
    prompts = prompts_of(tokenizer, 24)
    free = generate(model, tokenizer, prompts, GenerateConfig(max_new_tokens=24, **options), 8, True, fast=False)
    # the stop: a word the model writes at the most different places, so rows end at different steps
    places: dict[str, set[int]] = {}
    for text in free:
        for where, word in enumerate(text.split()):
            places.setdefault(word, set()).add(where)
    common = max(places, key=lambda w: (len(places[w]), w))
    cfg = GenerateConfig(max_new_tokens=24, stop=[common], **options)
    assert decoding.greedy_supported(model, generation_kwargs(cfg, model, tokenizer))
    old = generate(model, tokenizer, prompts, cfg, 8, True, fast=False)
    new = generate(model, tokenizer, prompts, cfg, 8, True, fast=True)
    assert new == old
    lengths = {len(tokenizer(t)["input_ids"]) for t in old}
    assert len(lengths) > 3 and sum(text != full for text, full in zip(old, free)) >= 3  # rows really stopped early


def test_greedy_decode_returns_what_generate_returns(tiny_llama_dir: Path) -> None:
    """Token level: the same tensor, prompts and padding after each row's end included, eos as the stop."""
    from transformers import AutoTokenizer

    from tunelab.tasks.generation import attention_mask, pad

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = lora_model(tiny_llama_dir, ["q_proj", "v_proj"], std=0.05)
    model.get_base_model().generation_config.eos_token_id = None
    rows = prompts_of(tokenizer, 6, seed=1)
    kwargs = generation_kwargs(GenerateConfig(max_new_tokens=16), model, tokenizer)
    with torch.inference_mode():
        probe = model.generate(input_ids=pad(rows, kwargs["pad_token_id"], left=True),
                               attention_mask=attention_mask(rows, left=True), **kwargs)
    # make the token the first row writes third its eos: rows then end at different steps
    kwargs["eos_token_id"] = [int(probe[0, -14])]
    ids, mask = pad(rows, kwargs["pad_token_id"], left=True), attention_mask(rows, left=True)
    with torch.inference_mode():
        expected = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    got = decoding.greedy_decode(model, ids, mask, kwargs)
    assert torch.equal(got, expected)
    assert (expected[:, ids.shape[1]:] == kwargs["pad_token_id"]).any()  # some row ended before the last step


def test_what_the_greedy_loop_leaves_to_generate(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = lora_model(tiny_llama_dir, ["q_proj"], std=0.0)
    greedy = GenerateConfig()
    assert decoding.greedy_supported(model, generation_kwargs(greedy, model, tokenizer))
    for other in (GenerateConfig(do_sample=True), GenerateConfig(num_beams=2)):
        assert not decoding.greedy_supported(model, generation_kwargs(other, model, tokenizer))
    model.get_base_model().generation_config.no_repeat_ngram_size = 2  # a logits processor the loop lacks
    assert not decoding.greedy_supported(model, generation_kwargs(greedy, model, tokenizer))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                             decoder_start_token_id=0))
    assert not decoding.greedy_supported(t5, {"max_new_tokens": 4, "pad_token_id": 0, "use_cache": True})


@pytest.mark.real
def test_real_smollm2_with_lora_generates_the_same_verses_fast(smol_tokenizer_dir: Path) -> None:
    """The translation recipe's model and adapter shape (LoRA r=16 on every projection), greedy with a line-break
    stop: the merged, rows-leaving path writes exactly model.generate's translations."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    model = lora_model(smol_tokenizer_dir, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                       std=0.002)
    prompts = [tokenizer(tokenizer.apply_chat_template(
        [{"role": "system", "content": "You translate English into Spanish."},
         {"role": "user", "content": f"Translate English to Spanish: {verse}"}], tokenize=False,
        add_generation_prompt=True), add_special_tokens=False)["input_ids"] for verse in VERSES]
    cfg = GenerateConfig(max_new_tokens=40, stop=["\n"])
    assert decoding.greedy_supported(model, generation_kwargs(cfg, model, tokenizer))  # the fast path is the one taken
    old = generate(model, tokenizer, prompts, cfg, 6, True, fast=False)
    new = generate(model, tokenizer, prompts, cfg, 6, True, fast=True)
    assert new == old
    assert len({len(t) for t in old}) > 6 and all(old)
