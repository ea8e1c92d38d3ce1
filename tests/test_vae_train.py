"""A VAE run end to end, like every other task: train with a recipe, report, resume exactly after Ctrl-C, reload
final/, and the two VAE commands (score, sample) on tables, images and encoder features of text."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import interrupt_after
from tests.test_vae import table_rows, write_csv
from tunelab import api
from tunelab.cli import app
from tunelab.errors import RunError


@pytest.fixture
def table_files(tmp_path: Path) -> dict[str, Path]:
    """Normal training rows; validation and test with a quarter of anomalies."""
    return {"train": write_csv(tmp_path / "train.csv", table_rows(160, 0)),
            "validation": write_csv(tmp_path / "val.csv", table_rows(48, 1) + table_rows(16, 2, anomalous=True)),
            "test": write_csv(tmp_path / "test.csv", table_rows(48, 3) + table_rows(16, 4, anomalous=True))}


def recipe_file(tmp_path: Path, data: dict[str, Any], **sections: Any) -> Path:
    raw: dict[str, Any] = {
        "name": "vae", "seed": 0, "model": {"name": "none"},
        "task": {"type": "vae", "input": "table", "normal": ["ok"], "latent": 2, "hidden": [16]},
        "data": data,
        "train": {"lr": 1e-2, "epochs": 4, "batch_size": 16, "warmup_ratio": 0.0, "log_every": 1},
        "eval": {"before": False, "batch_size": 32},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "vae.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def files(table: dict[str, Path]) -> dict[str, str]:
    return {name: str(path) for name, path in table.items()}


def test_vae_run_reports_elbo_terms_detection_and_baselines(tmp_path: Path, table_files: dict[str, Path]) -> None:
    run = api.train(recipe_file(tmp_path, files(table_files), task={"kl_warmup_epochs": 1.0}, train={"epochs": 30}),
                    name="table")
    test = run.summary["after"]["test"]
    assert test["elbo"] == pytest.approx(-(test["reconstruction"] + test["kl"]))
    assert test["kl"] > 0
    assert test["threshold_rule"] == "best F1 on validation"
    detectors = [row["detector"] for row in test["detectors"]]
    assert detectors == ["vae (-elbo)", "isolation_forest", "pca_2", "knn_5"]
    assert test["anomaly_share"] == 0.25
    assert test["roc_auc"] > 0.6 and test["anomaly_elbo"] < test["elbo"]  # better than chance after 300 small steps
    assert test["verdict"].startswith(("the VAE loses", "the VAE beats"))
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## Anomaly detection (test; thresholds chosen on validation)" in report and "Verdict: the VAE" in report
    info = json.loads((run / "final" / "tunelab.json").read_text(encoding="utf-8"))
    assert info["columns"] == ["a", "b", "c"] and info["threshold"] == pytest.approx(test["threshold"])
    assert set(load_file(run / "final" / "model.safetensors")) >= {"center", "spread", "mu.weight"}
    # the reloaded run evaluates to the same figures
    again = run.evaluate("test")
    assert again["roc_auc"] == pytest.approx(test["roc_auc"]) and again["elbo"] == pytest.approx(test["elbo"])


def test_resume_after_ctrl_c_equals_uninterrupted(tmp_path: Path, table_files: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = recipe_file(tmp_path, files(table_files), task={"kl_warmup_epochs": 2.0},
                         train={"max_steps": 16, "eval_every": 4})
    whole = api.train(recipe, name="whole")
    plain_steps = interrupt_after(monkeypatch, 6)  # the 7th step is in hand, in the middle of the KL warm-up
    with pytest.raises(RunError, match="interrupted at step 7"):
        api.train(recipe, name="cut")
    plain_steps()
    cut = tmp_path / "runs" / "cut"
    assert (cut / "checkpoints" / "step-0000007" / "manifest.json").is_file()
    api.train(cut, resume=True)
    a = load_file(whole / "checkpoints" / "step-0000016" / "model.safetensors")
    b = load_file(cut / "checkpoints" / "step-0000016" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert int(b["examples_seen"]) == 16 * 16
    records = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r for r in records(whole) if "train_loss" in r] == [r for r in records(cut) if "train_loss" in r]
    after = lambda run: json.loads((run / "summary.json").read_text())["after"]  # noqa: E731
    assert after(whole) == after(cut)


def test_score_and_sample_commands_on_a_table_run(tmp_path: Path, table_files: dict[str, Path]) -> None:
    run = api.train(recipe_file(tmp_path, files(table_files)), name="cli")
    runner = CliRunner()
    new = write_csv(tmp_path / "new.csv", [{"a": 0.5, "b": 1.0, "c": 5.0}, {"a": 1.0, "b": -2.0, "c": 5.0}])
    result = runner.invoke(app, ["score", str(run), str(new)])
    assert result.exit_code == 0, result.output
    scored = list(csv.DictReader((tmp_path / "new.csv.scores.csv").open(encoding="utf-8")))
    assert [row["row"] for row in scored] == ["new.csv, line 2".replace("new.csv", str(new)), f"{new}, line 3"]
    assert float(scored[1]["score"]) > float(scored[0]["score"]) and scored[1]["flag"] == "1"
    bad = write_csv(tmp_path / "bad.csv", [{"a": 0.5, "b": "x", "c": 5.0}])
    result = runner.invoke(app, ["score", str(run), str(bad)])
    assert result.exit_code == 2 and "line 2: column 'b' holds 'x'" in result.output
    out = tmp_path / "synth.csv"
    result = runner.invoke(app, ["sample", str(run), "--n", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    synthetic = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(synthetic) == 50 and list(synthetic[0]) == ["a", "b", "c"]
    quality = json.loads((tmp_path / "synth.csv.quality.json").read_text(encoding="utf-8"))
    assert [c["column"] for c in quality["columns"]] == ["a", "b", "c"]
    assert {"nearer_train_share", "exact_copies", "memorised"} <= set(quality["nearest_real"])
    assert "nearest real row" in result.output


def test_image_vae_on_digits_samples_pngs(tmp_path: Path) -> None:
    recipe = recipe_file(tmp_path, {"dataset": "digits", "limit": 200},
                         task={"input": "image", "image_size": 8, "normal": None}, eval={"max_examples": 60})
    run = api.train(recipe, name="digits")
    after = run.summary["after"]["test"]
    assert {"elbo", "reconstruction", "kl"} <= set(after) and "roc_auc" not in after  # no labels asked for
    info = json.loads((run / "final" / "tunelab.json").read_text())
    assert info["threshold_rule"] == "0.99 quantile of validation scores"
    out = tmp_path / "pngs"
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    images = sorted(out.glob("*.png"))
    assert len(images) == 5 and Image.open(images[0]).size == (8, 8) and Image.open(images[0]).mode == "L"
    assert (out / "quality.json").is_file()


def test_text_vae_models_encoder_features(tmp_path: Path, tiny_bert_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    normal = [{"text": f"a fine and {w} film", "label": "review"} for w in ("good", "dull", "warm", "long", "odd") * 8]
    plots = [{"text": "a man travels far away to find his lost brother and fights a dragon " * 3, "label": "plot"}] * 8
    data = {"train": str(write_csv(tmp_path / "t.csv", normal)),
            "validation": str(write_csv(tmp_path / "v.csv", normal[:10] + plots)),
            "test": str(write_csv(tmp_path / "s.csv", normal[10:20] + plots))}
    recipe = recipe_file(tmp_path, data, model={"name": str(tiny_bert_dir)},
                         task={"input": "text", "normal": ["review"], "max_length": 16})
    with pytest.raises(Exception, match="over task.max_length=16; raise it, or set task.truncation"):
        api.train(recipe, name="long")
    run = api.train(recipe_file(tmp_path, data, model={"name": str(tiny_bert_dir)},
                                task={"input": "text", "normal": ["review"], "max_length": 16, "truncation": True}),
                    name="text")
    summary = run.summary
    assert summary["data"]["truncated"] == 16 and summary["after"]["test"]["n"] == 18
    assert list((tmp_path / "cache" / "text-features").glob("*.npy"))  # encoded once, reused by score and resume
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "5", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "not a text" in result.output
