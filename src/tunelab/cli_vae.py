"""The ``tunelab score`` command of VAE runs (anomaly scores and flags for a data file) and ``tunelab sample`` of
generative runs, VAE or GAN (synthetic rows or images with their quality checks)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from tunelab.cli_common import _run, app, console
from tunelab.errors import RunError

if TYPE_CHECKING:
    from tunelab.run import Run


GENERATIVE = ("vae", "gan")  # task types that draw samples


def _generative_run(folder: Path, types: tuple[str, ...], command: str) -> Run:
    """The run, refused with a clear message unless its task type is one of ``types``.

    Like every command module, this one imports torch, scikit-learn and scipy only when a command runs: ``tunelab
    --help`` and every ``tunelab train`` process (compare, the web app and the tests start many) would pay ~2-3 s more.
    """
    from tunelab.run import Run

    run = Run(folder)
    if run.recipe.task.type not in types:
        raise RunError(f"{folder}: a {run.recipe.task.type} run; {command} needs a run of task.type "
                       f"{' or '.join(types)}")
    return run


def score_file(folder: Path, data: Path, out: Path) -> tuple[int, int, float]:
    """Score every row of a data file with a VAE run and write the scores CSV; returns (rows, flagged, threshold)."""
    from tunelab.data.sources import read_file

    run = _generative_run(folder, ("vae",), "score")
    results = run.task.score_rows(run.model, read_file(data), run.recipe.eval.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["row", "score", "flag", "elbo", "reconstruction", "kl"]
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({"row": r["where"], **{k: r[k] for k in fields[1:]}, "flag": int(r["flag"])} for r in results)
    return len(results), sum(r["flag"] for r in results), float(run.task.info["threshold"])


def sample_run(folder: Path, n: int, out: Path, seed: int) -> dict[str, Any]:
    """Draw samples from a VAE or GAN run; the run's data is read again for the distances to real rows."""
    from tunelab.data.prepare import prepare_rows
    from tunelab.tasks import synthetic

    run = _generative_run(folder, GENERATIVE, "sample")
    task = run.task
    splits, _ = prepare_rows(run.recipe.data, task, run.recipe.seed, run.recipe.eval.max_examples)
    return synthetic.synthesize(task, splits, n, out, seed)


@app.command()
def score(
    run: Annotated[Path, typer.Argument(help="A VAE run folder.")],
    data: Annotated[Path, typer.Argument(help="Rows to score (csv, tsv, jsonl, parquet) with the run's columns.")],
    out: Annotated[Optional[Path], typer.Option(help="Scores CSV to write (default: DATA.scores.csv).")] = None,
) -> None:
    """Anomaly score of every row (negative ELBO or reconstruction error, as the run's recipe chose) and a flag
    where it reaches the threshold chosen on validation.

    Example: tunelab score runs/vae-breast-cancer new-biopsies.csv
    """
    target = out or data.with_name(data.name + ".scores.csv")
    rows, flagged, threshold = _run(score_file, run, data, target)
    console.print(f"{rows} rows scored, {flagged} flagged (score >= {threshold:.4g}): {target}", highlight=False)


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="A VAE or GAN run folder (table or image input).")],
    n: Annotated[int, typer.Option("--n", help="How many samples.")] = 1000,
    out: Annotated[Path, typer.Option(
        help="CSV file (tables) or folder of PNGs (images) to write; a conditional GAN adds a label column, or "
             "one subfolder per class.")] = Path("synthetic.csv"),
    seed: Annotated[int, typer.Option(help="Seed of the latent draws.")] = 0,
) -> None:
    """Synthetic rows (CSV) or images (PNG folder) from a VAE or GAN, with per-column distribution distances
    (tables) and the nearest-real-row distance that catches memorised training rows.

    Examples: tunelab sample runs/vae-breast-cancer --n 1000 --out synth.csv;
    tunelab sample runs/gan-digits --n 500 --out digits/
    """
    report = _run(sample_run, run, n, out, seed)
    near = report["nearest_real"]
    console.print(f"{n} samples: {out}   quality: {report['report_path']}", highlight=False)
    console.print(f"nearest real row: a training row for {near['nearer_train_share']:.1%} of samples, a held-out row "
                  f"for the rest (about 50% for new rows; p = {near['p_value']:.2g}); {near['exact_copies']} exact "
                  "copies of training rows" + (" - the model MEMORISED training rows" if near["memorised"] else ""),
                  highlight=False)
    for column in report.get("columns", []):
        console.print(f"  {column['column']}: Wasserstein {column['wasserstein_in_std']:.3f} std, "
                      f"KS {column['ks']:.3f}", highlight=False)
