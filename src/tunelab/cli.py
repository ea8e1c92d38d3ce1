"""The ``tunelab`` command: parse, call the Python API, print. Errors of ours print as one clear message."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tunelab import cli_compare, cli_generate, cli_serve, cli_ui, cli_vae  # noqa: F401  (they register compare, generate, chat, serve, ui, score and sample on app)
from tunelab.cli_common import Overrides, _run, app, console, read_inputs


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, or a run folder to resume.")],
    set_: Overrides = None,
    name: Annotated[Optional[str], typer.Option(
        help="Run folder name under output.dir: letters, digits, '.', '_', '-' (default: recipe name + time).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the named run from its newest complete checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing run folder of the same name (only one tunelab wrote).")] = False,
) -> None:
    """Fine-tune as the recipe says; evaluate before and after; write a run folder.

    Examples:

        tunelab train recipes/sentiment.yaml

        tunelab train recipes/sentiment.yaml --set strategy.method=bitfit --set train.lr=1e-3 --name bitfit

        tunelab train runs/bitfit --resume
    """
    from tunelab import api
    from tunelab.runfolder import check_name

    if name is not None:  # before any data or model is loaded: a path here could point --overwrite anywhere
        _run(check_name, name)
    run_dir = _run(api.train, recipe, name=name, overwrite=overwrite, resume=resume, overrides=set_)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per process
        _print_summary(run_dir)


def _print_summary(run_dir: Path) -> None:
    import json

    from tunelab.report.write import before_after_rows

    path = run_dir / "summary.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    table = Table(title=f"{run_dir}")
    for column in ("split", "metric", "before", "after"):
        table.add_column(column)
    for row in before_after_rows(summary):
        table.add_row(*row)
    console.print(table)
    if "majority_baseline" in summary:
        console.print("majority-class baseline: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["majority_baseline"].items()))
    console.print(f"report: {run_dir / 'report.md'}   model: {run_dir / 'final'}")


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    split: Annotated[str, typer.Option(help="validation or test.")] = "test",
) -> None:
    """Evaluate a run's final model on a split, rebuilt exactly as in training.

    Example: tunelab eval runs/sentiment-20261122-101500 --split test
    """
    from tunelab import api

    metrics = _run(api.evaluate, run, split)
    table = Table(title=f"{run} [{split}]")
    table.add_column("metric")
    table.add_column("value")
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[Optional[Path], typer.Option(help="A text file, one input per line.")] = None,
) -> None:
    """Predict labels for texts with a run's final model.

    Examples:

        tunelab predict runs/sentiment-20261122-101500 "I loved every minute of it" "a tedious mess"

        tunelab predict runs/sentiment-20261122-101500 --file reviews.txt
    """
    from tunelab import api

    inputs = read_inputs(texts, file, "give texts as arguments or --file")
    loaded = _run(api.load, run)
    for result in loaded.predict(loaded.model, inputs):
        scores = "  ".join(f"{k}={v:.3f}" for k, v in result["scores"].items())
        console.print(f"[bold]{result['label']}[/]\t{scores}\t{result['text']}", highlight=False)


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Catalog model name, local folder, hub id, or a run folder.")],
    set_: Overrides = None,
    strategy: Annotated[Optional[str], typer.Option(help="Strategy method to apply first, e.g. freeze, lora.")] = None,
    depth: Annotated[int, typer.Option(help="Name parts shown for modules outside the transformer blocks.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Batch size for the memory estimate.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Sequence length for the memory estimate.")] = 128,
) -> None:
    """Parameters by module (total, trainable, frozen) and a training-memory estimate, before any training.

    Examples:

        tunelab inspect minilm-l6

        tunelab inspect minilm-l6 --strategy freeze --set strategy.bottom=0.5

        tunelab inspect runs/sentiment-20261122-101500
    """
    from tunelab.inspect import inspect_model

    _run(inspect_model, model, console, strategy=strategy, overrides=set_ or [], depth=depth,
         batch_size=batch_size, seq_len=seq_len)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    merge: Annotated[bool, typer.Option(help="Merge the adapter (LoRA, DoRA, IA3) into the base weights.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write (default: RUN/merged).")] = None,
) -> None:
    """Write a run's model as one plain Hugging Face folder that transformers loads without peft or tunelab.

    Example: tunelab export runs/lora --merge
    """
    if not merge:
        console.print("[bold red]error:[/] final/ already holds the model in its ecosystem format; "
                      "pass --merge to write a merged plain Hugging Face folder")
        raise typer.Exit(2)
    from tunelab import api

    folder = _run(api.export, run, out)
    console.print(f"merged model: {folder}")


@app.command()
def models() -> None:
    """List the named models that work offline here."""
    from tunelab.models import list_models

    table = Table(title="tunelab model catalog")
    for column in ("name", "kind", "hub id", "status"):
        table.add_column(column)
    for row in list_models():
        table.add_row(row["name"], row["kind"], row["hub_id"], row["status"])
    console.print(table)


def main() -> None:
    """Entry point for ``python -m tunelab``."""
    app(sys.argv[1:])

