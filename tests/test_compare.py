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
from tunelab.compare.results import aggregate, metric_split, pareto_front
from tunelab.compare.runner import RunResult
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
    assert full["head_lr"] == full["lr"] and head["head_lr"] == 3e-2  # the run's own record of its head rate
    assert head["weight_drift"] > 0.0 and full["weight_drift"] > 0.0  # the head moves in both (at 3e-2 vs 1e-4)
    assert full["before_mean"] is not None and full["metric_sd"] is None and len(full["metric_values"]) == 1
    folder = result.folder
    report = (folder / "report.md").read_text()
    assert "2 optimiser steps per variant" in report and "Seeds: 0." in report and "torch" in report
    assert "every finished run trained and was evaluated on the same examples" in report
    assert result.table in report and "| full | 1.0e-04 |" in result.table and "| feature-extraction | 1.0e-03 (3.0e-02) |" in result.table
    page = (folder / "report.html").read_text()
    assert "<table>" in page and page.count("<img") == 4
    for plot in ("metric_vs_params", "metric_vs_time", "metric_vs_memory", "loss_curves"):
        assert (folder / "plots" / f"{plot}.png").stat().st_size > 5000
    saved = json.loads((folder / "results.json").read_text())
    assert len(saved["runs"]) == 4 and saved["machine"]["logical_cores"] >= 1


def test_mean_and_spread_over_seeds(setup: dict) -> None:
    """Aggregation over seeds, on the real summary with a second seed's score changed."""
    real = next(r for r in setup["result"].results if r.variant == "full")
    other = copy.deepcopy(real.summary)
    split = metric_split(other)
    other["after"][split]["accuracy"] = real.summary["after"][split]["accuracy"] + 0.1
    twin = RunResult("full", 1, "done", real.run_dir, other, lr=real.lr)
    failed = RunResult("full", 2, "failed", error="boom", lr=real.lr)
    row = aggregate([real, twin, failed], "accuracy")[0]
    first = real.summary["after"][split]["accuracy"]
    assert row["status"] == "2/3 seeds" and row["errors"] == {2: "boom"}
    assert row["metric_mean"] == pytest.approx(first + 0.05)
    assert row["metric_sd"] == pytest.approx(0.1 / 2**0.5)


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
