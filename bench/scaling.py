"""How cost grows: examples/s, tokens/s and peak RSS as training rows double and as sequence length doubles.

Three sweeps (``run.py --only scaling``), every point in its own process so its peak RSS is its own:

- ``rows``: minilm-l6, full fine-tuning, one epoch of 1k, 2k, 4k, 8k Rotten Tomatoes rows (batch 32, length 128).
- ``length-minilm``: minilm-l6, full fine-tuning, a fixed number of steps at 64, 128, 256, 512 tokens per row.
- ``length-smollm2``: smollm2-135m-instruct, LoRA r=8 on q_proj/v_proj (the causal_lora scenario), a fixed number
  of steps at the same lengths.

For the length sweeps every row really fills the length: Rotten Tomatoes snippets of one label joined until the
row has at least that many tokens, and tech-support chats joined turn after turn into one long conversation; both are
then truncated to the length (``task.truncation``). Each point records the shortest and longest training row in
tokens, so the table shows that they fill it. tunelab runs every point; the default Trainer script runs the sweeps
named in ``--scaling-trainer`` (default: length-minilm, the cheap one; with full rows the padding cannot differ).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CAUSAL_MODEL,
    CLASSIFIER_MODEL,
    SEED,
    Result,
    Scenario,
    causal_recipe_data,
    run_script,
    write_causal_tokens,
    write_jsonl,
)

FULL = {"method": "full"}
LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
SIDES = {"tunelab": ("tunelab_side.py", "tunelab"), "trainer": ("trainer_baseline.py", "trainer")}


@dataclass(frozen=True)
class Sweep:
    name: str
    title: str
    axis: str  # what doubles
    points: list[int]
    scenario: Callable[[int], Scenario]  # the work at one point
    write: Callable[[Path, int], None]  # its data files


def sweeps(args: Any) -> dict[str, Sweep]:
    """The sweeps at the sizes the arguments give (see run.py's --scaling-* options)."""
    rows, lengths = args.scaling_rows, args.scaling_lengths
    text_steps, causal_steps, causal_batch = args.scaling_steps, args.scaling_causal_steps, args.scaling_causal_batch
    return {s.name: s for s in [
        Sweep("rows", "minilm-l6, full fine-tuning, one epoch", "training rows", rows,
              lambda n: Scenario(f"scaling-rows-{n}", f"{n} rows", CLASSIFIER_MODEL, "classification", FULL, 1e-4, 32,
                                 steps=math.ceil(n / 32), data=f"rows{n}"),
              lambda work, n: write_rows(work, n, max(rows), args.scaling_validation_rows)),
        Sweep("length-minilm", f"minilm-l6, full fine-tuning, {text_steps} steps of 8 rows", "tokens per row", lengths,
              lambda n: Scenario(f"scaling-length-minilm-{n}", f"{n} tokens", CLASSIFIER_MODEL, "classification",
                                 FULL, 1e-4, 8, steps=text_steps, max_length=n, data=f"filled{n}", eval_batch=8),
              lambda work, n: write_filled_text(work, n, 8 * text_steps, 16)),
        Sweep("length-smollm2", f"smollm2-135m-instruct, LoRA r=8, {causal_steps} steps of {causal_batch} chats",
              "tokens per row", lengths,
              lambda n: Scenario(f"scaling-length-smollm2-{n}", f"{n} tokens", CAUSAL_MODEL, "causal_lm", LORA, 5e-4,
                                 causal_batch, steps=causal_steps, max_length=n, data=f"chats{n}",
                                 task_options={"truncation": True}, eval_batch=4),
              lambda work, n: write_filled_chats(work, n, causal_batch * causal_steps, 4)),
    ]}


def titles(args: Any) -> dict[str, tuple[str, str]]:
    return {name: (sweep.title, sweep.axis) for name, sweep in sweeps(args).items()}


def trainer_models(args: Any) -> set[str]:
    """The models the Trainer side loads in the chosen sweeps (it finds their folders in models.json)."""
    chosen = set(args.scaling_sweeps.split(",")) & set(args.scaling_trainer.split(","))
    return {sweep.scenario(sweep.points[0]).model for name, sweep in sweeps(args).items() if name in chosen}


def add_arguments(parser: Any) -> None:
    """run.py's options for the sweep; the defaults are sized to take about 12 minutes on 2 idle cores."""
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--scaling-sweeps", default="rows,length-minilm,length-smollm2", help="which sweeps")
    parser.add_argument("--scaling-trainer", default="length-minilm",
                        help="sweeps where the default Trainer script runs too (comma-separated; '' for none)")
    parser.add_argument("--scaling-rows", type=ints, default=[1000, 2000, 4000, 8000], help="rows sweep points")
    parser.add_argument("--scaling-validation-rows", type=int, default=200, help="rows sweep: validation rows")
    parser.add_argument("--scaling-lengths", type=ints, default=[64, 128, 256, 512], help="length sweep points")
    parser.add_argument("--scaling-steps", type=int, default=6, help="length-minilm: steps of 8 rows")
    parser.add_argument("--scaling-causal-steps", type=int, default=3, help="length-smollm2: steps")
    parser.add_argument("--scaling-causal-batch", type=int, default=2, help="length-smollm2: chats per step")


# ---- data ---------------------------------------------------------------------------------------------------------

def _rotten_tomatoes() -> list[dict[str, Any]]:
    from tunelab.data.builtin import rotten_tomatoes

    rows, _ = rotten_tomatoes()
    random.Random(SEED).shuffle(rows)
    return rows


def write_rows(work: Path, n: int, most: int, validation: int) -> None:
    """The first ``n`` of ``most`` shuffled rows (so each point's rows hold the smaller points'), and one validation
    set for all points."""
    rows = _rotten_tomatoes()
    if most + validation + 16 > len(rows):
        raise SystemExit(f"Rotten Tomatoes has {len(rows)} rows; the rows sweep asks {most} + {validation}")
    splits = {"train": rows[:n], "validation": rows[most : most + validation],
              "test": rows[most + validation : most + validation + 16]}
    for split, chosen in splits.items():
        write_jsonl(work / f"rows{n}-{split}.jsonl", chosen)


def write_filled_text(work: Path, length: int, train: int, validation: int) -> None:
    """Rows of snippets of one label joined until MiniLM's tokenizer gives at least ``length`` tokens."""
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(CLASSIFIER_MODEL)
    by_label: dict[str, list[str]] = {}
    for row in _rotten_tomatoes():
        by_label.setdefault(row["label"], []).append(row["text"])
    made: list[dict[str, Any]] = []
    cursors = dict.fromkeys(by_label, 0)
    while len(made) < train + validation + 4:
        label = sorted(by_label)[len(made) % len(by_label)]
        texts: list[str] = []
        while len(tokenizer(" ".join(texts))["input_ids"]) < length:
            texts.append(by_label[label][cursors[label] % len(by_label[label])])
            cursors[label] += 1
        made.append({"text": " ".join(texts), "label": label})
    cut = {"train": made[:train], "validation": made[train : train + validation], "test": made[train + validation :]}
    for split, chosen in cut.items():
        write_jsonl(work / f"filled{length}-{split}.jsonl", chosen)


def write_filled_chats(work: Path, length: int, train: int, validation: int) -> None:
    """Tech-support chats joined turn after turn into conversations of at least ``length`` tokens through
    SmolLM2's chat template (with the bench's system prompt), and the Trainer side's token files."""
    from tunelab.data.builtin import load_builtin
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(CAUSAL_MODEL)
    system = causal_recipe_data(work)["task"]["system_prompt"]
    chats = load_builtin("tech-support")[0]["train"]
    made, cursor = [], 0
    while len(made) < train + validation + 2:
        messages: list[dict[str, str]] = []
        while count(tokenizer, [{"role": "system", "content": system}, *messages]) < length:
            messages += chats[cursor % len(chats)]["messages"]
            cursor += 1
        made.append({"messages": messages})
    cut = {"train": made[:train], "validation": made[train : train + validation], "test": made[train + validation :]}
    for split, chosen in cut.items():
        write_jsonl(work / f"chats{length}-{split}.jsonl", chosen)
    write_causal_tokens(work, f"chats{length}", length, {"truncation": True})


def count(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a conversation rendered by the chat template, as tunelab's causal_lm task tokenizes it."""
    if len(messages) < 2:
        return 0
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---- running ------------------------------------------------------------------------------------------------------

def run(chosen: list[str], trainer_sweeps: set[str], args: Any, work: Path, say: Callable[[str], None]
        ) -> dict[str, list[tuple[int, str, Result]]]:
    """Every point of the chosen sweeps, tunelab first, then the Trainer where asked: (x, side, result) per sweep."""
    found: dict[str, list[tuple[int, str, Result]]] = {}
    for name in chosen:
        sweep = sweeps(args)[name]
        found[name] = []
        for x in sweep.points:
            s = sweep.scenario(x)
            sweep.write(work, x)
            spec = work / f"{s.name}.json"
            s.save(spec)
            for side in ["tunelab", *(["trainer"] if name in trainer_sweeps else [])]:
                script, suffix = SIDES[side]
                say(f"scaling {name} {x}: {side} ...")
                result = run_script(script, [str(spec), "--work", str(work)], work / f"{s.name}-{suffix}.log",
                                    work / f"{s.name}-{suffix}.json")
                found[name].append((x, side, result))
    return found
