"""The ``tunelab compare`` command: parse, call ``tunelab.compare.compare``, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli_common import Overrides, _run, app, console
from tunelab.errors import RecipeError


def _split_list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise RecipeError(f"{what}: give a comma-separated list")
    return items


def _seeds(text: str | None) -> list[int] | None:
    items = _split_list(text, "--seeds")
    try:
        return [int(s) for s in items] if items else None
    except ValueError:
        raise RecipeError(f"--seeds '{text}': expected integers such as 0,1,2") from None


@app.command()
def compare(
    recipe: Annotated[Path, typer.Argument(help="The recipe every variant shares.")],
    strategies: Annotated[Optional[str], typer.Option(
        help="Comma-separated presets: full, freeze-bottom-25, freeze-bottom-50, feature-extraction, lora, ia3, bitfit, "
             "gradual-unfreeze. Default: all (or only the --strategy-file variants when a file is given).")] = None,
    strategy_file: Annotated[Optional[Path], typer.Option(
        help="YAML of custom variants: NAME: {strategy: {method: lora, r: 16}, lr: 1e-3, why: ..., set: [KEY=VALUE]}.")] = None,
    seeds: Annotated[Optional[str], typer.Option(
        help="Training seeds, e.g. 0,1,2 (the data split stays fixed by the recipe seed). Default: the recipe's.")] = None,
    budget: Annotated[Optional[str], typer.Option(
        help="Per variant: steps (300), epochs (2ep), wall-clock training time (90s, 5m), or 'recipe' for "
             "the recipe's own epochs/steps. Default: 200 steps.")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Folder under --out: letters, digits, '.', '_', '-' (default: the recipe name).")] = None,
    out: Annotated[Path, typer.Option(help="Parent folder of comparisons.")] = Path("compare"),
    set_: Overrides = None,
    overwrite: Annotated[bool, typer.Option(
        help="Discard an earlier comparison of the same name instead of resuming it (only a folder compare wrote).")] = False,
) -> None:
    """Train one recipe with several strategies on identical data, splits and budget; print and write the table.

    Variants are ranked on validation; test is shown beside it and chooses nothing. Each variant runs in its own
    process. Rerunning the same command resumes an interrupted comparison.

    Examples:

        tunelab compare recipes/sentiment.yaml --budget 300

        tunelab compare recipes/sentiment.yaml --strategies full,freeze-bottom-50,lora --seeds 0,1,2 --budget 5m

        tunelab compare recipes/sentiment.yaml --strategies full --strategy-file my-variants.yaml
    """
    from tunelab.compare import compare as run_compare

    def echo(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    result = _run(lambda: run_compare(recipe, strategies=_split_list(strategies, "--strategies"), strategy_file=strategy_file,
                                      seeds=_seeds(seeds), budget=budget, name=name, out=out, overrides=set_,
                                      overwrite=overwrite, echo=echo))
    echo("")
    echo(result.table)
    echo("")
    echo(f"report: {result.folder / 'report.md'} and report.html   data: results.csv, results.json")
