"""The generation scenario, one side per process: the same prompts and the same greedy settings through tunelab and
through what a user writes.

- ``tunelab``: the causal-LM task's ``generate`` (what ``tunelab generate`` and the before/after evaluation run):
  prompts sorted by length into batches of ``--tunelab-batch``, adapters merged while generating, finished rows
  leaving the batch.
- ``user``: ``PeftModel.from_pretrained`` + ``model.generate`` on batches of ``--user-batch`` prompts in the given
  order, left padding by the tokenizer, the same stop string (``stop_strings`` + tokenizer), decoded and cut the same way.

Both load SmolLM2-135M-Instruct and the same LoRA adapter folder (r=16 on every projection, as recipes/translation.yaml;
by default a seeded random adapter written once, or ``--adapter`` a trained run's ``final/``), and ask for Spanish
translations of the first held-out Bible verses of bible-en-es through the model's chat template. Each side writes
its outputs, the tokens of those outputs and its wall time; run.py compares the outputs and divides.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import CAUSAL_MODEL, load_average, peak_rss_bytes, read_jsonl

SYSTEM = "You translate English into Spanish."
TEMPLATE = "Translate English to Spanish: {source}"
MAX_NEW_TOKENS = 80
STOP = ["\n"]


def load(work: Path) -> tuple[Any, Any]:
    """The base model with the adapter (as a user loads it) and the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = json.loads((work / "models.json").read_text(encoding="utf-8"))[CAUSAL_MODEL]
    adapter = (work / "generation-adapter.txt").read_text(encoding="utf-8").strip()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), adapter).eval()
    return model, tokenizer


def tunelab_side(model: Any, tokenizer: Any, sources: list[str], batch: int, new_tokens: int) -> list[str]:
    from tunelab.recipe import GenerateConfig, parse_recipe
    from tunelab.tasks import build_task

    recipe = parse_recipe({"name": "bench-generation", "model": {"name": CAUSAL_MODEL},
                           "task": {"type": "causal_lm", "prompt_template": TEMPLATE, "system_prompt": SYSTEM},
                           "data": {"dataset": "bible-en-es"}}, "bench generation")
    task = build_task(recipe, tokenizer)
    return task.generate(model, sources, GenerateConfig(max_new_tokens=new_tokens, stop=STOP), batch_size=batch)


def user_side(model: Any, tokenizer: Any, sources: list[str], batch: int, new_tokens: int) -> list[str]:
    """What a user writes: chat-template the prompts, generate in batches in the given order, decode, cut."""
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": TEMPLATE.format(source=s)}],
                                           tokenize=False, add_generation_prompt=True) for s in sources]
    out = []
    for start in range(0, len(texts), batch):
        inputs = tokenizer(texts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, stop_strings=STOP,
                                       tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)
        for text in tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True):
            text = text.strip()
            out.append(text.split(STOP[0])[0].strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["tunelab", "user"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tunelab-batch", type=int, default=64)
    parser.add_argument("--user-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    args = parser.parse_args()
    sources = [r["source"] for r in read_jsonl(args.work / "generation-prompts.jsonl")]
    model, tokenizer = load(args.work)
    load_before = load_average()
    wall, cpu = time.perf_counter(), time.process_time()
    if args.side == "tunelab":
        outputs = tunelab_side(model, tokenizer, sources, args.tunelab_batch, args.max_new_tokens)
    else:
        outputs = user_side(model, tokenizer, sources, args.user_batch, args.max_new_tokens)
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in outputs)
    result = {"side": args.side, "prompts": len(sources), "tokens": tokens, "seconds": seconds,
              "cpu_seconds": cpu_seconds, "peak_rss_bytes": peak_rss_bytes(), "outputs": outputs,
              "batch": args.tunelab_batch if args.side == "tunelab" else args.user_batch,
              "max_new_tokens": args.max_new_tokens,
              "load_before": load_before, "load_after": load_average()}
    (args.work / f"generation-{args.side}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()


# ---- the harness's part (run.py): both sides, then one comparison -----------------------------------------------

def run_both(work: Path, tunelab_batch: int, user_batch: int, new_tokens: int, python: str,
             env: dict[str, str]) -> dict[str, Any]:
    """Each side in its own process (tunelab first), then the comparison: tokens/s of each, identical outputs."""
    import subprocess

    sides = {}
    for side in ("tunelab", "user"):
        log = work / f"generation-{side}.log"
        command = [python, str(Path(__file__)), side, "--work", str(work), "--tunelab-batch", str(tunelab_batch),
                   "--user-batch", str(user_batch), "--max-new-tokens", str(new_tokens)]
        with log.open("w") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parent)
        if done.returncode:
            tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
            raise SystemExit(f"generation {side} failed (exit {done.returncode}); end of {log}:\n{tail}")
        sides[side] = json.loads((work / f"generation-{side}.json").read_text(encoding="utf-8"))
    t, u = sides["tunelab"], sides["user"]
    differ = [i for i, (a, b) in enumerate(zip(t["outputs"], u["outputs"])) if a != b]
    return {"tunelab": t, "user": u, "differ": differ}


def table(result: dict[str, Any]) -> str:
    """The generation table: tokens/s each side, the ratio (target 2x) and whether the outputs are the same."""
    t, u, differ = result["tunelab"], result["user"], result["differ"]
    rate = lambda r: r["tokens"] / r["seconds"]  # noqa: E731
    ratio = rate(t) / rate(u)
    same = len(t["outputs"]) - len(differ)
    lines = [
        "| side | batches | prompts | answer tokens | wall | tokens/s | per CPU-second | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
        f"| tunelab (`task.generate`) | {t['batch']}, sorted by length | {t['prompts']} | {t['tokens']} | "
        f"{t['seconds']:.1f} s | {rate(t):.1f} | {t['tokens'] / t['cpu_seconds']:.2f} | {t['peak_rss_bytes'] / 2**20:.0f} MiB |",
        f"| user (`PeftModel` + `generate`) | {u['batch']}, in order | {u['prompts']} | {u['tokens']} | "
        f"{u['seconds']:.1f} s | {rate(u):.1f} | {u['tokens'] / u['cpu_seconds']:.2f} | {u['peak_rss_bytes'] / 2**20:.0f} MiB |",
        "",
        f"- tokens/s tunelab / user: **{ratio:.2f}x** against a target of 2x: {'met' if ratio >= 2 else 'NOT met'}",
        f"- identical outputs: {same} of {len(t['outputs'])}" + (
            "" if not differ else f" — NOT identical at rows {differ[:10]}: "
            + "; ".join(f"{t['outputs'][i]!r} vs {u['outputs'][i]!r}" for i in differ[:3])),
        f"- load average before/after: tunelab {t['load_before']} / {t['load_after']}, user {u['load_before']} / "
        f"{u['load_after']}",
        "- tokens: the answers as cut at the stop string, re-tokenized (the same count on both sides when the outputs "
        "agree); wall: the generation call only, model loading excluded.",
    ]
    return "\n".join(lines)
