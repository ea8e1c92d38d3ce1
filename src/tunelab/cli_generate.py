"""``tunelab generate`` and ``tunelab chat``: text from a trained causal-LM or seq2seq run.

Both ask the model the way training did (prompt template, system prompt, chat template); the decoding options
default to the recipe's ``generate:`` section and can be changed per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError

from tunelab.cli_common import _run, app, console, read_inputs
from tunelab.errors import RecipeError, RunError
from tunelab.recipe import GenerateConfig

MaxNew = Annotated[Optional[int], typer.Option(help="Most tokens to generate.")]
Beams = Annotated[Optional[int], typer.Option(help="Beam search with this many beams (1 = greedy).")]
Sample = Annotated[Optional[bool], typer.Option("--sample/--greedy", help="Sample instead of greedy/beam decoding.")]
Temperature = Annotated[Optional[float], typer.Option(help="Sampling temperature.")]
TopP = Annotated[Optional[float], typer.Option(help="Sampling: nucleus probability mass.")]
TopK = Annotated[Optional[int], typer.Option(help="Sampling: keep the k likeliest tokens (0 = all).")]
Repetition = Annotated[Optional[float], typer.Option(help="Repetition penalty (1.0 = none).")]


def decoding(loaded: Any, **given: Any) -> GenerateConfig:
    """The recipe's generate section with this call's options over it, validated like a recipe."""
    chosen = {key: value for key, value in given.items() if value is not None}
    try:
        return GenerateConfig.model_validate(loaded.recipe.generate.model_dump() | chosen)
    except ValidationError as err:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"bad generation option: {problems}") from None


def load_generator(run: Path) -> Any:
    """A trained run that can generate; a classification run is refused with the command to use instead."""
    from tunelab import api

    loaded = api.load(run)
    if not hasattr(loaded, "generate"):
        raise RunError(f"{run} is a {loaded.recipe.task.type} run, which does not generate text; use tunelab predict")
    return loaded


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="A causal_lm or seq2seq run folder.")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    file: Annotated[Optional[Path], typer.Option(help="A text file, one prompt per line.")] = None,
    raw: Annotated[bool, typer.Option(help="Send prompts as given, without the recipe's prompt template.")] = False,
    max_new_tokens: MaxNew = None, num_beams: Beams = None, do_sample: Sample = None, temperature: Temperature = None,
    top_p: TopP = None, top_k: TopK = None, repetition_penalty: Repetition = None,
) -> None:
    """Generate text with a run's final model, batched, for prompts or a file of prompts.

    Examples:

        tunelab generate runs/translation --prompt "In the beginning God created the heavens and the earth."

        tunelab generate runs/support --prompt "My laptop will not boot" --sample --temperature 0.7

        tunelab generate runs/translation --file verses.txt --num-beams 4
    """
    inputs = read_inputs(prompt, file, "give prompts with --prompt or --file")
    loaded = _run(load_generator, run)
    cfg = _run(decoding, loaded, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
               temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty)
    outputs = _run(loaded.generate, loaded.model, inputs, cfg, raw)
    for text, output in zip(inputs, outputs):
        console.print(f"> {text}", style="bold", highlight=False, markup=False)
        console.print(output + "\n", highlight=False, markup=False)


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="A causal_lm run folder (a seq2seq run answers each line on its own).")],
    system: Annotated[Optional[str], typer.Option(help="System prompt (default: the recipe's task.system_prompt).")] = None,
    max_new_tokens: MaxNew = None, num_beams: Beams = None, do_sample: Sample = None, temperature: Temperature = None,
    top_p: TopP = None, top_k: TopK = None, repetition_penalty: Repetition = None,
) -> None:
    """Talk to a run's model turn by turn. /reset forgets the conversation; /exit or Ctrl-D quits.

    Example: tunelab chat runs/support --sample --temperature 0.7
    """
    loaded = _run(load_generator, run)
    cfg = _run(decoding, loaded, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
               temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    console.print(f"chatting with {run} ({loaded.recipe.task.type}); /reset to start over, /exit to quit")
    while True:
        try:
            text = console.input("[bold]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text == "/exit":
            return
        if text == "/reset":
            messages = list(start)
            continue
        if not text:
            continue
        if hasattr(loaded, "chat"):
            messages.append({"role": "user", "content": text})
            reply = _run(loaded.chat, loaded.model, messages, cfg)
            messages.append({"role": "assistant", "content": reply})
        else:
            reply = _run(loaded.generate, loaded.model, [text], cfg)[0]
        console.print("[bold]model>[/] ", end="")
        console.print(reply, highlight=False, markup=False)
