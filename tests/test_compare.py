"""`tunelab compare`: variants see identical data and splits, a failing variant does not stop the others, an
interrupted comparison resumes without redoing finished variants, and the wall-clock budget stops training cleanly.

One comparison (tiny BERT, 2 steps, two presets plus two broken variants: three processes) is shared by the
module; repeats over seeds are checked in-process, which is much cheaper than more processes.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import make_recipe, toy_rows
from tunelab import api
from tunelab.cli import app
from tunelab.compare import compare
from tunelab.compare.presets import DEFAULT_BUDGET_STEPS, PRESETS, load_strategy_file, parse_budget, pick_variants
from tunelab.compare.results import aggregate, markdown_table, one_off_seconds, pareto_front
from tunelab.compare.runner import COMPARE_MARKER, RunResult
from tunelab.errors import RecipeError, RunError
from tunelab.models import load_tokenizer
from tunelab.recipe import load_recipe
from tunelab.tasks import build_task

# a key the strategy file does not know: refused before any process starts
TYPO = {"typo-entry": {"strategy": {"method": "full"}, "learning_rate": 1e-3}}
# valid YAML and recipe, but the 2-block model has no block 7: fails inside its training process
NO_SUCH_BLOCK = {"no-such-block": {"strategy": {"method": "freeze", "indices": [7]}, "lr": 1e-3}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> dict:
    """One comparison: two presets that run, one variant refused up front, one that crashes in its process."""
    tmp = tmp_path_factory.mktemp("compare")
    data = tmp / "reviews.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(toy_rows(80))
    recipe = make_recipe(tmp, tiny_bert_dir, data, train={"max_steps": 4, "eval_every": 2, "log_every": 1})
    strategy_file = tmp / "variants.yaml"
    strategy_file.write_text(yaml.safe_dump({**TYPO, **NO_SUCH_BLOCK}, sort_keys=False), encoding="utf-8")
    lines: list[str] = []
    result = compare(recipe, strategies=["full", "feature-extraction"], strategy_file=strategy_file, budget="2",
                     out=tmp / "compare", echo=lines.append)
    return {"tmp": tmp, "recipe": recipe, "data": data, "result": result, "lines": lines, "file": strategy_file}


def runs(setup: dict) -> dict[str, Path]:
    return {r.variant: r.run_dir for r in setup["result"].results if r.status != "failed"}


def rebuilt_splits(run_dir: Path, overrides: list[str] | None = None) -> dict:
    """The splits a run's resolved recipe produces, rebuilt here from the data file."""
    recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    return api.prepare_data(recipe, build_task(recipe, load_tokenizer(recipe.model.name))).splits


def test_variants_train_and_evaluate_on_identical_splits(setup: dict) -> None:
    found = runs(setup)
    assert sorted(found) == ["feature-extraction", "full"]
    splits = {name: rebuilt_splits(run_dir) for name, run_dir in found.items()}
    assert {k: len(v) for k, v in splits["full"].items()} == {"train": 48, "validation": 16, "test": 16}
    assert splits["full"] == splits["feature-extraction"]
    for name, run_dir in found.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["data"]["fingerprint"] == api.split_fingerprints(splits[name])  # what the process itself used
        assert summary["steps"] == 2
    # the variants differ only where they should: strategy and learning rate
    full, head = (load_recipe(found[n] / "recipe.yaml").model_dump(mode="json") for n in ("full", "feature-extraction"))
    assert {s for s in full if full[s] != head[s]} == {"strategy", "train"}
    assert {k for k in full["train"] if full["train"][k] != head["train"][k]} == {"lr"}
    # another training seed keeps the split (it follows the recipe seed) ...
    assert rebuilt_splits(found["full"], ["train.seed=1"]) == splits["full"]


def test_the_training_seed_changes_training_not_data(tmp_path: Path, setup: dict, tiny_bert_dir: Path) -> None:
    made = {0: runs(setup)["full"]}  # the comparison ran it with train.seed 0
    made[1] = api.train(load_recipe(made[0] / "recipe.yaml", ["train.seed=1", f"output.dir={tmp_path}"]), name="s1")
    prints = [json.loads((made[s] / "summary.json").read_text())["data"]["fingerprint"] for s in (0, 1)]
    assert prints[0] == prints[1]
    heads = [load_file(made[s] / "final" / "model.safetensors")["classifier.weight"] for s in (0, 1)]
    assert (heads[0] - heads[1]).abs().max() > 1e-4


def test_failing_variants_are_reported_and_the_others_finish(setup: dict) -> None:
    result = setup["result"]
    rows = {r["variant"]: r for r in result.rows}
    assert [r["variant"] for r in result.rows] == ["full", "feature-extraction", "typo-entry", "no-such-block"]
    assert rows["full"]["status"] == rows["feature-extraction"]["status"] == "ok"
    assert rows["typo-entry"]["status"] == rows["no-such-block"]["status"] == "failed"
    assert "learning_rate" in rows["typo-entry"]["errors"][0]
    assert "index 7" in rows["no-such-block"]["errors"][0] and "2 blocks" in rows["no-such-block"]["errors"][0]
    assert any(line.startswith("[4/4] no-such-block seed 0: FAILED") for line in setup["lines"])
    folder = result.folder
    report = (folder / "report.md").read_text()
    assert "## Failed variants" in report and "**no-such-block** (seed 0)" in report and "index 7" in report
    assert "**typo-entry** (seed 0)" in report
    with (folder / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["variant"] for r in table] == ["full", "feature-extraction", "typo-entry", "no-such-block"]
    assert table[3]["status"] == "failed" and "index 7" in table[3]["errors"]


def test_results_report_and_plots(setup: dict) -> None:
    result = setup["result"]
    rows = {r["variant"]: r for r in result.rows}
    full, head = rows["full"], rows["feature-extraction"]
    assert head["trainable"] < full["trainable"] and head["trainable_share"] < 0.01
    assert full["peak_memory_bytes"] > 50 * 2**20 and full["seconds_per_step"] > 0 and full["examples_per_second"] > 0
    assert full["lr"] == PRESETS["full"].lr and head["lr"] == PRESETS["feature-extraction"].lr
    assert full["head_lr"] == full["lr"] and head["head_lr"] == 1e-1  # the run's own record of its head rate
    assert head["weight_drift"] > 0.0 and full["weight_drift"] > 0.0  # the head moves in both (at 1e-1 vs 1e-4)
    assert full["before_mean"] is not None and full["validation_sd"] is None and len(full["validation_values"]) == 1
    assert len(full["test_values"]) == 1 and {full["rank"], head["rank"]} <= {1, 2}
    folder = result.folder
    report = (folder / "report.md").read_text()
    assert "**Decided on validation**" in report and "chose nothing" in report
    assert "validation accuracy: decides" in result.table and "test accuracy: reported only" in result.table
    assert "2 optimiser steps per variant" in report and "Seeds: 0." in report and "torch" in report
    assert "every finished run trained and was evaluated on the same examples" in report
    assert result.table in report and "| full | 1.0e-04 |" in result.table and "| feature-extraction | 1.0e-03 (1.0e-01) |" in result.table
    page = (folder / "report.html").read_text()
    assert "<table>" in page and page.count("<img") == 4
    for plot in ("metric_vs_params", "metric_vs_time", "metric_vs_memory", "loss_curves"):
        assert (folder / "plots" / f"{plot}.png").stat().st_size > 5000
    saved = json.loads((folder / "results.json").read_text())
    assert len(saved["runs"]) == 4 and saved["machine"]["logical_cores"] >= 1
    assert saved["decided_by"] == "validation" and saved["reported"] == "test"
    with (folder / "results.csv").open() as handle:
        first = next(csv.DictReader(handle))
    assert first["decided_by"] == "validation" and first["rank"] in ("1", "2") and float(first["test_mean"]) >= 0


def test_mean_and_spread_over_seeds(setup: dict) -> None:
    """Aggregation over seeds, on the real summary with a second seed's score changed."""
    real = next(r for r in setup["result"].results if r.variant == "full")
    other = copy.deepcopy(real.summary)
    for split, change in (("validation", 0.1), ("test", -0.2)):
        other["after"][split]["accuracy"] = real.summary["after"][split]["accuracy"] + change
    twin = RunResult("full", 1, "done", real.run_dir, other, lr=real.lr)
    failed = RunResult("full", 2, "failed", error="boom", lr=real.lr)
    row = aggregate([real, twin, failed], "accuracy")[0]
    assert row["status"] == "2/3 seeds" and row["errors"] == {2: "boom"}
    for split, change in (("validation", 0.1), ("test", -0.2)):
        assert row[f"{split}_mean"] == pytest.approx(real.summary["after"][split]["accuracy"] + change / 2)
        assert row[f"{split}_sd"] == pytest.approx(abs(change) / 2**0.5)


def test_resume_skips_finished_variants(setup: dict) -> None:
    found = runs(setup)
    kept = found["full"] / "summary.json"
    kept_mtime = kept.stat().st_mtime_ns
    (found["feature-extraction"] / "summary.json").unlink()  # interrupted after its last checkpoint
    args = ["compare", str(setup["recipe"]), "--strategies", "full,feature-extraction", "--budget", "2",
            "--out", str(setup["tmp"] / "compare")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "[1/2] full seed 0: finished earlier, skipped" in out.output
    assert "[2/2] feature-extraction seed 0: done" in out.output
    assert kept.stat().st_mtime_ns == kept_mtime
    assert (found["feature-extraction"] / "summary.json").is_file()
    assert "| full | 1.0e-04 |" in out.output and "report.md" in out.output
    # a rerun with another budget would mix unequal runs: refused
    with pytest.raises(RunError, match="different recipe.*train.max_steps"):
        compare(setup["recipe"], strategies=["full"], budget="3", out=setup["tmp"] / "compare", echo=print)


def test_wall_clock_budget_stops_at_a_step_boundary(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 100_000, "max_seconds": 0.5, "eval_every": 10_000})
    run = api.train(recipe, name="timed")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["out_of_time"] is True
    assert 1 <= summary["steps"] < 100_000 and 0.5 <= summary["train_seconds"] < 5
    assert (run / "checkpoints" / f"step-{summary['steps']:07d}" / "manifest.json").is_file()


def test_budget_parsing() -> None:
    assert parse_budget("300").overrides() == ["train.max_steps=300"]
    assert parse_budget("5m").overrides() == ["train.max_seconds=300.0"]
    assert parse_budget("90s").value == 90 and parse_budget("1.5h").value == 5400
    assert parse_budget("2ep").overrides() == ["train.epochs=2.0", "train.max_steps=null"]
    assert parse_budget("recipe").overrides() == []
    assert parse_budget(None).overrides() == [f"train.max_steps={DEFAULT_BUDGET_STEPS}"]
    for bad in ("1.5", "5 parsecs", "-3", "0"):
        with pytest.raises(RecipeError, match="--budget"):
            parse_budget(bad)


def test_presets_and_strategy_file(tmp_path: Path) -> None:
    assert set(PRESETS) == {"full", "freeze-bottom-25", "freeze-bottom-50", "feature-extraction", "lora", "ia3",
                            "bitfit", "gradual-unfreeze"}
    assert all(p.lr > 0 and p.why for p in PRESETS.values())
    with pytest.raises(RecipeError, match="Did you mean 'freeze-bottom-50'"):
        pick_variants(["freeze-bottom-5O"], {})
    path = tmp_path / "v.yaml"
    path.write_text("full: {strategy: {method: full}, lr: 3.0e-5}\nmine: {strategy: {method: bitfit}}\n")
    custom = load_strategy_file(path, default_lr=7e-5)
    chosen = pick_variants(["full", "lora"], custom)
    assert [(v.name, v.lr) for v in chosen] == [("full", 3e-5), ("lora", PRESETS["lora"].lr), ("mine", 7e-5)]
    path.write_text("bad name: {strategy: {method: full}}\n")
    with pytest.raises(RecipeError, match="variant name 'bad name'"):
        load_strategy_file(path, 1e-4)


def test_pareto_front() -> None:
    # (memory, score): the cheapest, the best, and one between that beats nothing
    points = [(100, 0.70), (300, 0.90), (200, 0.80), (250, 0.75), (300, 0.85)]
    assert pareto_front(points) == {0, 1, 2}


# ---- choose on validation, report on test; one-off cost apart; folders compare may write or delete ---------------


def summary(validation: float, test: float, *, memory: int = 100 * 2**20, steps: int = 40, train_seconds: float = 20.0,
            examples_per_second: float = 64.0, **extra: object) -> dict:
    """A run summary with only what aggregation reads (the shape api.train writes)."""
    return {"strategy": "full", "learning_rates": {"lr": 1e-4, "head_lr": 1e-4},
            "after": {"validation": {"accuracy": validation}, "test": {"accuracy": test}},
            "before": {"validation": {"accuracy": 0.5}, "test": {"accuracy": 0.5}},
            "best": {"metric": "accuracy", "value": validation, "step": steps},
            "parameters": {"trainable": 10, "total": 100, "trainable_share": 0.1}, "peak_rss_bytes": memory,
            "steps": steps, "train_seconds": train_seconds, "examples_per_second": examples_per_second,
            "wall_seconds": train_seconds + 5, "data": {"fingerprint": {"train": "x"}}, "speedups": {}, **extra}


def test_rank_and_pareto_front_come_from_validation_never_test() -> None:
    """'a' wins on validation and loses on test, 'b' the reverse, at equal memory: 'a' ranks first and alone holds
    the front (the old code ranked on test and put 'b' there)."""
    results = [RunResult("a", 0, "done", summary=summary(0.90, 0.70), lr=1e-4),
               RunResult("b", 0, "done", summary=summary(0.80, 0.95), lr=1e-4),
               RunResult("broken", 0, "failed", error="boom", lr=1e-4)]
    rows = {r["variant"]: r for r in aggregate(results, "accuracy")}
    assert rows["a"]["pareto_memory"] and not rows["b"]["pareto_memory"]
    assert (rows["a"]["rank"], rows["b"]["rank"], rows["broken"]["rank"]) == (1, 2, None)
    assert (rows["a"]["validation_mean"], rows["a"]["test_mean"]) == (0.90, 0.70)
    assert all(r["decided_by"] == "validation" for r in rows.values())
    table = markdown_table(list(rows.values()), "accuracy")
    assert "| rank (validation) | validation accuracy: decides (mean ± sd, n) | test accuracy: reported only |" in table
    assert "| a | 1.0e-04 | 1 | 0.9000 (1) | 0.7000 (1) |" in table
    # a metric the recipe minimises (eval.mode: min) ranks the lowest validation figure first
    low = {r["variant"]: r for r in aggregate(results, "accuracy", "min")}
    assert (low["a"]["rank"], low["b"]["rank"]) == (2, 1) and low["b"]["pareto_memory"] and not low["a"]["pareto_memory"]


def test_one_off_work_has_its_own_column_and_stays_out_of_per_step_cost() -> None:
    """40 steps in 20 s of which 12 s built the cache: 0.2 s/step, not 0.5, and 2.5x the examples/s."""
    recorded = summary(0.8, 0.8, one_off_seconds=12.0)
    from_note = summary(0.8, 0.8, speedups={"head_cache": "on: head inputs of 48 examples cached (0.1 MiB, built in 12.0 s)"})
    abandoned = summary(0.8, 0.8, speedups={"boundary_cache": "off: logits through the cache differ"})
    plain = summary(0.8, 0.8)
    results = [RunResult(name, 0, "done", summary=s, lr=1e-4)
               for name, s in (("recorded", recorded), ("from-note", from_note), ("abandoned", abandoned), ("plain", plain))]
    rows = {r["variant"]: r for r in aggregate(results, "accuracy")}
    for name in ("recorded", "from-note"):
        assert rows[name]["seconds_per_step"] == pytest.approx(0.2)
        assert rows[name]["examples_per_second"] == pytest.approx(64.0 * 20 / 8)
        assert rows[name]["one_off_seconds"] == 12.0 and rows[name]["train_seconds"] == 20.0
    assert [one_off_seconds(s) for s in (recorded, from_note, abandoned, plain)] == [12.0, 12.0, None, 0.0]
    assert rows["plain"]["one_off_seconds"] == 0.0 and rows["plain"]["seconds_per_step"] == pytest.approx(0.5)
    assert rows["abandoned"]["one_off_seconds"] is None and rows["abandoned"]["seconds_per_step"] == pytest.approx(0.5)
    table = markdown_table(list(rows.values()), "accuracy")
    assert "| one-off s | s/step | examples/s | train s |" in table
    assert "| 12.0 | 0.200 | 160.0 | 20.0 |" in table and "| ? | 0.500 | 64.0 | 20.0 |" in table


def test_compare_name_is_a_plain_folder_name(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    """--name /elsewhere (or ../elsewhere) with --overwrite deleted that folder before; now it is refused, untouched."""
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for name in (str(precious), "../precious", "a/b", "..", ".hidden"):
        with pytest.raises(RunError, match="not a plain folder name"):
            compare(recipe, strategies=[], strategy_file=_only_invalid(tmp_path), name=name, out=tmp_path / "out",
                    overwrite=True, echo=print)
    out = CliRunner().invoke(app, ["compare", str(recipe), "--name", str(precious), "--overwrite", "--out", str(tmp_path)])
    assert out.exit_code == 2 and "not a plain folder name" in out.output
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_compare_writes_into_or_deletes_only_its_own_folders(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    mine = tmp_path / "out" / "mine"
    mine.mkdir(parents=True)
    (mine / "report.md").write_text("my own notes")
    for overwrite in (False, True):
        with pytest.raises(RunError, match=r"out/mine exists but is not a tunelab comparison.*Move or delete it"):
            compare(recipe, strategies=[], strategy_file=_only_invalid(tmp_path), name="mine", out=tmp_path / "out",
                    overwrite=overwrite, echo=print)
    assert (mine / "report.md").read_text() == "my own notes" and sorted(p.name for p in mine.iterdir()) == ["report.md"]
    # a comparison's own folder (its marker) is resumed into, and replaced with --overwrite
    made = compare(recipe, strategies=[], strategy_file=_only_invalid(tmp_path), name="ours", out=tmp_path / "out", echo=print)
    assert (made.folder / COMPARE_MARKER).is_file() and (made.folder / "report.md").is_file()
    (made.folder / "stale.txt").write_text("x")
    again = compare(recipe, strategies=[], strategy_file=_only_invalid(tmp_path), name="ours", out=tmp_path / "out",
                    overwrite=True, echo=print)
    assert not (again.folder / "stale.txt").exists() and (again.folder / COMPARE_MARKER).is_file()
    # a comparison from before the marker is known by its results.json
    legacy = tmp_path / "out" / "legacy"
    legacy.mkdir()
    (legacy / "results.json").write_text(json.dumps({"budget": "2 steps", "variants": [], "runs": []}))
    compare(recipe, strategies=[], strategy_file=_only_invalid(tmp_path), name="legacy", out=tmp_path / "out",
            overwrite=True, echo=print)
    assert (legacy / COMPARE_MARKER).is_file()


def _only_invalid(tmp_path: Path) -> Path:
    """A strategy file whose one variant is refused up front: a comparison that starts no process."""
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(TYPO), encoding="utf-8")
    return path
