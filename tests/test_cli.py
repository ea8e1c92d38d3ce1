"""The commands as a user types them: train, eval, predict (args and --file), inspect, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import make_recipe
from tunelab.cli import app

runner = CliRunner()


def test_train_eval_predict_inspect(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, eval={"before": True})
    done = runner.invoke(app, ["train", str(recipe), "--name", "cli", "--set", "train.max_steps=4"])
    assert done.exit_code == 0, done.output
    run = tmp_path / "runs" / "cli"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and "validation" in summary["before"] and "test" in summary["after"]
    assert "accuracy" in done.output and "report" in done.output

    evaluated = runner.invoke(app, ["eval", str(run), "--split", "test"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"{summary['after']['test']['accuracy']:.4f}" in evaluated.output

    texts = tmp_path / "texts.txt"
    texts.write_text("a wonderful and funny film\n\nboring and flat\n")
    predicted = runner.invoke(app, ["predict", str(run), "great acting", "--file", str(texts)])
    assert predicted.exit_code == 0, predicted.output
    lines = [line for line in predicted.output.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.split()[0] in ("neg", "pos") for line in lines)

    inspected = runner.invoke(app, ["inspect", str(run), "--strategy", "freeze", "--set", "strategy.bottom=1"])
    assert inspected.exit_code == 0, inspected.output
    assert "bert.encoder.layer.0" in inspected.output and "frozen" in inspected.output
    assert "training memory estimate" in inspected.output


def test_errors_are_one_clear_message(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    bad = runner.invoke(app, ["train", str(recipe), "--set", "train.learning_rate=1e-4"])
    assert bad.exit_code == 2
    assert "Did you mean 'lr'" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["predict", str(tmp_path / "nope"), "text"])
    assert missing.exit_code == 2 and "no such run folder" in missing.output


def test_the_command_line_loads_without_torch_sklearn_or_scipy() -> None:
    """``tunelab --help`` and every ``tunelab train`` child of compare/the web app pay only for what the command uses:
    the command modules import the heavy libraries inside their commands (this took 4-6 s before)."""
    import subprocess
    import sys

    code = "import sys, tunelab.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'scipy', 'transformers', 'accelerate'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, "-m", "tunelab", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "train" in helped.stdout and "sample" in helped.stdout
