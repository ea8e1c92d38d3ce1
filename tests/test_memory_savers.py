"""Memory savers of causal-LM training leave results unchanged: the chunked output layer + cross-entropy gives the
plain loss and gradients (float32, ~1e-6 relative), a model whose logits are more than ``lm_head(hidden)`` keeps the
plain path, and training with activation checkpointing (LoRA with dropout: the masks are replayed) follows the same
loss curve and ends at the same weights as without it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.test_generation import WORDS, recipe_for, smol_tokenizer_dir, tiny_llama_dir, write_jsonl  # noqa: F401
from tunelab import api
from tunelab.tasks.chunked_loss import IGNORE, chunked_loss_sum, chunking_matches


def tiny_causal_lm(vocab: int = 300) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        tie_word_embeddings=False))


def batch_of(vocab: int = 300) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Three right-padded rows, targets shifted to the predicting position, prompt and padding at -100."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), IGNORE)], dim=1)
    targets[:, :3] = IGNORE  # the prompt
    targets[mask == 0] = IGNORE
    targets[1, 8] = targets[2, 4] = IGNORE  # the last real token predicts nothing
    return {"input_ids": ids, "attention_mask": mask}, targets


def test_chunked_loss_and_gradients_equal_the_plain_ones() -> None:
    model = tiny_causal_lm()
    inputs, targets = batch_of()
    keep = targets != IGNORE
    plain = F.cross_entropy(model(**inputs, use_cache=False).logits[keep].float(), targets[keep], reduction="sum")
    plain.backward()
    wanted = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    chunked = chunked_loss_sum(model, inputs, targets, chunk=4)  # several chunks, the last one short
    chunked.backward()
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, wanted[name], rtol=1e-5, atol=1e-7, msg=name)
    assert isinstance(model.lm_head, torch.nn.Linear)  # the output layer is back in place
    assert chunking_matches(model, inputs, targets)


@pytest.mark.parametrize(("every", "wanted"), [(1, [True, True]), (2, [True, False])])
def test_activation_checkpointing_switch_reaches_the_blocks(every: int, wanted: list[bool]) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_causal_lm(), LoraConfig(r=2, target_modules=["q_proj"]))
    api.checkpoint_activations(model, "tiny", every)
    assert model.get_base_model().is_activation_checkpointing
    assert [layer.gradient_checkpointing for layer in model.get_base_model().model.layers] == wanted


def test_a_model_that_changes_its_logits_keeps_the_plain_loss() -> None:
    """Soft-capped logits (Gemma 2's tanh) are more than lm_head(hidden): the probe must refuse chunking. (A mere
    scale would pass, rightly: it commutes with a bias-free output layer, so the chunked loss is still the same.)"""
    model = tiny_causal_lm()
    inner = model.forward

    def capped(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        out.logits = 2.0 * torch.tanh(out.logits / 2.0)
        return out

    model.forward = capped
    inputs, targets = batch_of()
    assert not chunking_matches(model, inputs, targets)
    assert model.training  # the probe ran in eval mode and put the mode back


def losses(run: Any) -> list[float]:
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


def uneven_rows(n: int) -> list[dict[str, str]]:
    rng = random.Random(2)
    return [{"prompt": " ".join(rng.sample(WORDS, 3)), "completion": " ".join(rng.sample(WORDS, rng.randint(1, 6)))}
            for _ in range(n)]


def test_training_with_activation_checkpointing_or_plain_loss_follows_the_same_curve(tmp_path: Path,
                                                                                     tiny_llama_dir: Path) -> None:
    from safetensors.torch import load_file

    path = write_jsonl(tmp_path / "rows.jsonl", uneven_rows(48))
    runs = {}
    for name, train in {"default": {}, "plain": {"chunked_loss": False},
                        "checkpointed": {"activation_checkpointing": True},
                        "every_second": {"activation_checkpointing": True,
                                         "activation_checkpointing_every": 2}}.items():
        recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"},
                            strategy={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.2,
                                      "target_modules": ["q_proj", "v_proj", "up_proj"]},
                            train={"max_steps": 4, "eval_every": 4, "log_every": 1, **train},
                            eval={"before": False}, generate={"samples": 0})
        run = api.train(recipe, name=name)
        runs[name] = (losses(run), load_file(Path(run) / "final" / "adapter_model.safetensors"))
    curve, weights = runs["default"]
    assert len(curve) == 4 and all(0 < x < 20 for x in curve)
    for name in ("plain", "checkpointed", "every_second"):
        other_curve, other_weights = runs[name]
        assert other_curve == pytest.approx(curve, rel=1e-5), name
        for key, value in weights.items():
            torch.testing.assert_close(other_weights[key], value, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_bf16_trains_close_to_fp32_and_fp16_is_refused_on_a_cpu(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """bf16 autocast on a CPU: finite losses within 3% of float32's (bfloat16 keeps 8 bits of mantissa), and not
    float32's bit for bit (autocast was on); a float32 run afterwards in the same process is float32 again. The
    evaluations before and after training and ``Run.evaluate`` run under the same autocast."""
    from tunelab.errors import RecipeError

    path = write_jsonl(tmp_path / "rows.jsonl", uneven_rows(48))
    curves, runs = [], []
    for i, precision in enumerate(("fp32", "bf16", "fp32")):
        recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"},
                            strategy={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                                      "target_modules": ["q_proj", "v_proj"]},
                            train={"max_steps": 3, "eval_every": 3, "log_every": 1, "precision": precision},
                            generate={"samples": 0})
        runs.append(api.train(recipe, name=f"{precision}-{i}"))
        curves.append(losses(runs[-1]))
    fp32, bf16, again = curves
    assert all(torch.isfinite(torch.tensor(bf16))) and len(bf16) == 3
    assert bf16 == pytest.approx(fp32, rel=3e-2)
    assert bf16 != fp32
    assert again == fp32
    before = [run.summary["before"]["test"]["loss"] for run in runs]  # the same untouched model each time
    assert before[1] == pytest.approx(before[0], rel=1e-2) and before[1] != before[0] and before[2] == before[0]
    assert runs[1].evaluate("test")["loss"] == runs[1].summary["after"]["test"]["loss"]  # tunelab eval: bf16 too
    if not torch.cuda.is_available():
        recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"}, train={"precision": "fp16"})
        with pytest.raises(RecipeError, match="fp16 needs a GPU"):
            api.train(recipe, name="fp16")
