"""Generation tasks: -100 masking (prompt and padding), chat-template rendering, packing without cross-attention,
batched left-padded generation, seq2seq training and generation on a config-built T5, a saved LoRA run that
generates exactly what it generated before saving, and bad chat data named by line."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import MINILM_DIR
from tunelab import api
from tunelab.cli import app
from tunelab.data.sources import Row
from tunelab.errors import DataError
from tunelab.recipe import parse_recipe
from tunelab.tasks import build_task
from tunelab.tasks.generation import IGNORE

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish"]


@pytest.fixture(scope="session")
def smol_tokenizer_dir() -> Path:
    """The real SmolLM2 tokenizer (with its chat template), from the converted catalog model."""
    from tunelab.models import model_path

    return Path(model_path("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer_dir: Path) -> Path:
    """A 2-block Llama (hidden 32) with the real SmolLM2 tokenizer and chat template, saved as an HF folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer T5 (d_model 32) with the real MiniLM WordPiece tokenizer ([SEP] ends sequences)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_for(tmp_path: Path, model: Path, data_file: Path, task: dict[str, Any], **sections: Any) -> Any:
    """A small generation recipe; keyword sections are merged over the defaults."""
    raw: dict[str, Any] = {
        "name": "gen", "model": {"name": str(model)}, "task": {"max_length": 64, **task},
        "data": {"train": str(data_file), "split": {"validation": 0.2, "test": 0.2}},
        "train": {"lr": 1e-2, "max_steps": 6, "batch_size": 8, "warmup_ratio": 0.0},
        "eval": {"batch_size": 8}, "generate": {"max_new_tokens": 6, "samples": 3},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_recipe(raw)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def copy_rows(n: int, keys: tuple[str, str] = ("prompt", "completion")) -> list[dict[str, str]]:
    """Repeat-after-me pairs: learnable by a tiny model in a few steps."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        words = " ".join(rng.sample(WORDS, 3))
        rows.append({keys[0]: words, keys[1]: words})
    return rows


def labelled_text(tokenizer: Any, feature: dict[str, Any]) -> str:
    return tokenizer.decode([t for t, label in zip(feature["input_ids"], feature["labels"]) if label != IGNORE])


# ---- causal LM: masking and rendering -----------------------------------------------------------------------------
def test_pair_rendered_with_chat_template_and_only_answer_trains(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    recipe = recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl",
                        {"type": "causal_lm", "prompt_template": "Translate English to Spanish: {source}"},
                        data={"columns": {"completion": "target"}})
    task = build_task(recipe, tokenizer)
    rows = [Row({"source": "The dog runs.", "target": "El perro corre."}, "mem", 1),
            Row({"source": "Good morning, my friend, how are you?", "target": "Buenos días."}, "mem", 2)]
    assert [task.check_row(r) for r in rows] == [None, None]
    features = task.featurize(rows).features
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Translate English to Spanish: The dog runs."},
         {"role": "assistant", "content": "El perro corre."}], tokenize=True)["input_ids"]
    assert features[0]["input_ids"] == expected  # exactly the model's own chat rendering
    assert labelled_text(tokenizer, features[0]) == "El perro corre.<|im_end|>"  # the answer and its end, nothing else
    assert tokenizer.decode(features[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert task.count(features[:1]) == len(tokenizer("El perro corre.")["input_ids"]) + 1

    batch = task.collate(features)
    short = len(features[0]["input_ids"])
    assert batch["input_ids"].shape[1] == len(features[1]["input_ids"]) > short
    assert (batch["labels"][0, short:] == IGNORE).all() and (batch["attention_mask"][0, short:] == 0).all()
    assert (batch["labels"][1] != IGNORE).sum() == task.count(features[1:])


def test_loss_on_answers_skips_prompt_logits_and_equals_the_full_computation(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    path = write_jsonl(tmp_path / "pairs.jsonl", copy_rows(12))
    recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"})
    task = build_task(recipe, AutoTokenizer.from_pretrained(tiny_llama_dir))
    features = api.prepare_data(recipe, task).splits["train"][:4]
    batch = task.collate(features)
    model = task.build_model()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # every position
    targets = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], IGNORE)], dim=1)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                                 reduction="sum")
    seen: list[int] = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    assert torch.allclose(task.loss_sum(model, batch), expected, rtol=1e-5)
    assert seen and seen[0] < batch["input_ids"].shape[1]  # the prompt positions never reached the output layer


def test_chat_rows_mask_all_but_assistant_turns(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    messages = [{"role": "user", "content": "My mouse is dead."}, {"role": "assistant", "content": "Change the batteries."},
                {"role": "user", "content": "Still dead."}, {"role": "assistant", "content": "Try another USB port."}]
    recipe = recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl",
                        {"type": "causal_lm", "system_prompt": "You are a patient support agent."})
    task = build_task(recipe, tokenizer)
    (feature,) = task.featurize([Row({"messages": messages}, "mem", 1)]).features
    rendered = tokenizer.decode(feature["input_ids"])
    assert rendered.startswith("<|im_start|>system\nYou are a patient support agent.<|im_end|>")
    assert labelled_text(tokenizer, feature) == "Change the batteries.<|im_end|>Try another USB port.<|im_end|>"
    assert feature["reference"] == "Try another USB port." and feature["input"] == "Still dead."
    assert tokenizer.decode(feature["prompt_ids"]).endswith("Still dead.<|im_end|>\n<|im_start|>assistant\n")

    every = build_task(recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl", {"type": "causal_lm", "loss_on": "all"}),
                       tokenizer)
    (whole,) = every.featurize([Row({"messages": messages}, "mem", 1)]).features
    assert whole["labels"][0] == IGNORE and whole["labels"][1:] == whole["input_ids"][1:]


def test_bad_chat_data_is_named_by_line(tmp_path: Path, tiny_llama_dir: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "chats.jsonl", [
        good,
        {"messages": [{"role": "user", "content": "anyone there?"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]},
        {"prompt": "hi", "completion": ""},
    ] + [good] * 5)
    from transformers import AutoTokenizer

    recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"})
    task = build_task(recipe, AutoTokenizer.from_pretrained(tiny_llama_dir))
    with pytest.raises(DataError) as err:
        api.prepare_data(recipe, task)
    message = str(err.value)
    assert "4 bad row(s)" in message
    assert f"{path}, line 2: the chat has no assistant turn" in message
    assert f"{path}, line 3: message 1: empty assistant answer (the target)" in message
    assert f"{path}, line 4: message 1 has role 'robot', which the chat template does not know" in message
    assert f"{path}, line 5: empty target in column 'completion'" in message


# ---- causal LM: packing and generation ----------------------------------------------------------------------------
def test_packing_equals_separate_examples(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    packed = build_task(recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl",
                                   {"type": "causal_lm", "packing": True, "max_length": 128}), tokenizer)
    model = packed.build_model().eval()  # checks that this architecture keeps packed examples apart
    features = packed.featurize([Row(r, "mem", i + 1) for i, r in enumerate(copy_rows(6))]).features
    batch = packed.collate(features)
    assert batch["input_ids"].shape[0] < len(features) and "attention_mask" not in batch  # really packed
    with torch.no_grad():
        together = packed.loss_sum(model, batch)
        apart = packed.loss_sum(model, packed.eval_collate(features))
    assert (batch["labels"] != IGNORE).sum() == packed.count(features)
    assert torch.allclose(together, apart, rtol=1e-5), (together, apart)


def test_batched_left_padded_generation_equals_one_by_one(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    recipe = recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl", {"type": "causal_lm"},
                        generate={"max_new_tokens": 8})
    task = build_task(recipe, AutoTokenizer.from_pretrained(tiny_llama_dir))
    model = task.build_model()
    prompts = ["hi", "my laptop will not boot after the update last night", "red blue"]
    together = task.generate(model, prompts, batch_size=3)
    alone = [task.generate(model, [p], batch_size=1)[0] for p in prompts]
    assert together == alone and all(together)


def test_generation_ends_at_a_stop_string(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    plain = recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl", {"type": "causal_lm"}, generate={"max_new_tokens": 12})
    task = build_task(plain, tokenizer)
    model = task.build_model()
    full = task.generate(model, ["my laptop will not boot"], batch_size=1)[0]
    stop = full.split()[2]  # a word the random model writes mid-answer
    assert len(full) > full.find(stop) + len(stop)
    stopping = recipe_for(tmp_path, tiny_llama_dir, tmp_path / "x.jsonl", {"type": "causal_lm"},
                          generate={"max_new_tokens": 12, "stop": [stop]})
    cut = build_task(stopping, tokenizer).generate(model, ["my laptop will not boot"], batch_size=1)[0]
    assert cut == full[: full.find(stop)].strip() and stop not in cut


# ---- seq2seq ------------------------------------------------------------------------------------------------------
def test_seq2seq_labels_pad_with_minus_100_never_pad_id(tmp_path: Path, tiny_t5_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    recipe = recipe_for(tmp_path, tiny_t5_dir, tmp_path / "x.jsonl",
                        {"type": "seq2seq", "prompt_template": "repeat: {source}"})
    task = build_task(recipe, tokenizer)
    rows = [Row({"source": "red cat", "target": "red"}, "mem", 1), Row({"source": "blue", "target": "blue dog sun moon"}, "mem", 2)]
    features = task.featurize(rows).features
    assert tokenizer.decode(features[0]["input_ids"], skip_special_tokens=True) == "repeat : red cat"
    batch = task.collate(features)
    assert batch["labels"][0].tolist()[len(features[0]["labels"]):] == [IGNORE] * 3
    assert tokenizer.pad_token_id not in batch["labels"].tolist()[0]
    assert task.count(features) == len(features[0]["labels"]) + len(features[1]["labels"])


def test_seq2seq_trains_generates_and_reloads(tmp_path: Path, tiny_t5_dir: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", copy_rows(80, ("source", "target")))
    recipe = recipe_for(tmp_path, tiny_t5_dir, path, {"type": "seq2seq"},
                        train={"max_steps": 12, "lr": 1e-2}, eval={"max_examples": 8})
    run = api.train(recipe, name="t5")
    summary = json.loads((run / "summary.json").read_text())
    before, after = summary["before"]["test"], summary["after"]["test"]
    assert after["loss"] < before["loss"] * 0.8  # it learnt
    assert {"bleu", "chrf", "rougeL", "exact_match", "perplexity"} <= set(after)
    assert after["chrf_signature"].startswith("nrefs:1") and summary["data"]["rows"]["test"] == 8
    samples = summary["samples"]["test"]
    assert len(samples) == 3 and all(set(s) == {"input", "reference", "before", "after"} for s in samples)
    report = (run / "report.md").read_text()
    assert "## Samples" in report and samples[0]["reference"] in report and "sacreBLEU signatures" in report

    loaded = api.load(run)
    assert loaded.generate(loaded.model, [s["input"] for s in samples]) == [s["after"] for s in samples]
    again = api.evaluate(run, "test")  # `tunelab eval` rebuilds the split and scores generation the same way
    assert again["chrf"] == pytest.approx(after["chrf"]) and again["loss"] == pytest.approx(after["loss"], rel=1e-5)


# ---- a saved LoRA run generates exactly what it generated before saving ---------------------------------------------
def test_saved_lora_run_generates_what_it_generated_before_saving(tmp_path: Path, tiny_llama_dir: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", copy_rows(60))
    recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"},
                        strategy={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
                        train={"max_steps": 8, "lr": 5e-2}, eval={"max_examples": 6})
    run = api.train(recipe, name="lora")
    assert json.loads((run / "final" / "tunelab.json").read_text())["format"] == "peft"
    samples = json.loads((run / "summary.json").read_text())["samples"]["test"]
    assert any(s["before"] != s["after"] for s in samples)  # the adapter changed what the model says

    loaded = api.load(run)
    assert loaded.generate(loaded.model, [s["input"] for s in samples]) == [s["after"] for s in samples]
    result = CliRunner().invoke(app, ["generate", str(run), "--prompt", samples[0]["input"]])
    assert result.exit_code == 0, result.output
    assert samples[0]["after"] in result.output
    talk = CliRunner().invoke(app, ["chat", str(run), "--max-new-tokens", "4"], input="red blue\n/reset\nhi\n/exit\n")
    assert talk.exit_code == 0 and talk.output.count("model>") == 2, talk.output


def test_recipes_parse_and_persona_example_is_valid_chat_data(tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    from tunelab.data.sources import read_file
    from tunelab.recipe import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("translation", "support", "persona", "flan-t5-opus"):
        recipe = load_recipe(root / f"{name}.yaml")
        assert recipe.task.type in ("causal_lm", "seq2seq") and recipe.eval.metric == "loss"
    example = yaml.safe_load((root / "persona.yaml").read_text())
    assert example["data"]["dataset"].startswith("tech-support-")
    rows = read_file(root / "data" / "persona-example.jsonl")
    task = build_task(load_recipe(root / "persona.yaml", [f"model.name={tiny_llama_dir}"]),
                      AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert len(rows) >= 5 and all(task.check_row(r) is None for r in rows)
    assert len(task.featurize(rows).features) == len(rows)


def test_causal_lm_accumulation_equals_the_bigger_batch(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """Answers of different lengths: the loss is a mean over target tokens of the whole global batch, so four
    micro-batches must give the gradient of one batch (a mean of per-micro-batch means would not)."""
    from safetensors.torch import load_file

    rng = random.Random(1)
    rows = [{"prompt": " ".join(rng.sample(WORDS, 2)), "completion": " ".join(rng.sample(WORDS, rng.randint(1, 6)))}
            for _ in range(60)]
    path = write_jsonl(tmp_path / "uneven.jsonl", rows)
    runs = {}
    for accum in (1, 4):
        recipe = recipe_for(tmp_path, tiny_llama_dir, path, {"type": "causal_lm"},  # eps 1: AdamW's step ~ lr * gradient,
                            train={"max_steps": 3, "grad_accum": accum, "eval_every": 3, "lr": 1.0},  # so it shows
                            optim={"eps": 1.0, "weight_decay": 0.0},  # gradient differences instead of their signs
                            eval={"before": False}, generate={"samples": 0})
        runs[accum] = load_file(api.train(recipe, name=f"accum{accum}") / "checkpoints" / "step-0000003" / "model.safetensors")
    start = load_file(tiny_llama_dir / "model.safetensors")
    moved = (runs[1]["model.layers.0.mlp.down_proj.weight"] - start["model.layers.0.mlp.down_proj.weight"]).abs().max()
    assert moved > 1e-4, "the weights must move for the comparison to mean something"
    worst = max((runs[1][k] - runs[4][k]).abs().max().item() for k in runs[1])
    assert worst <= moved * 1e-3, f"largest difference {worst} for a movement of {moved}"  # float32 sums reordered
