"""``tunelab compare`` on generative runs: VAE variants (beta, latent size) ranked on validation ROC-AUC when the
recipe detects anomalies (the loss weighs KL by each variant's own beta, so it would compare unlike things), and
GAN variants ranked on the validation detection score (lower is better)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_gan import gan_recipe
from tests.test_vae import table_rows, write_csv
from tests.test_vae_train import recipe_file
from tunelab.compare import compare, ranking_metric
from tunelab.compare.presets import load_strategy_file
from tunelab.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def variants(path: Path, entries: dict[str, list[str]]) -> Path:
    path.write_text(yaml.safe_dump({name: {"strategy": {"method": "full"}, "set": sets}
                                    for name, sets in entries.items()}, sort_keys=False), encoding="utf-8")
    return path


def test_vae_variants_compare_ranks_on_validation_roc_auc(tmp_path: Path) -> None:
    data = {"train": str(write_csv(tmp_path / "train.csv", table_rows(120, 0))),
            "validation": str(write_csv(tmp_path / "val.csv", table_rows(36, 1) + table_rows(12, 2, anomalous=True))),
            "test": str(write_csv(tmp_path / "test.csv", table_rows(36, 3) + table_rows(12, 4, anomalous=True)))}
    recipe = recipe_file(tmp_path, data, output={"dir": str(tmp_path / "runs"), "trackers": []})
    assert ranking_metric(load_recipe(recipe)) == ("roc_auc", "max")
    file = variants(tmp_path / "v.yaml", {"beta-1": [], "beta-4-latent-3": ["task.beta=4", "task.latent=3"]})
    result = compare(recipe, strategy_file=file, budget="12", out=tmp_path / "compare", echo=print)
    assert [row["variant"] for row in result.rows] == ["beta-1", "beta-4-latent-3"]
    assert all(row["status"] == "ok" and row["validation_mean"] is not None for row in result.rows), result.rows
    assert sorted(row["rank"] for row in result.rows) in ([1, 2], [1, 1])
    assert "validation roc_auc: decides" in result.table and "| beta-4-latent-3 |" in result.table
    run = result.results[1].run_dir
    assert load_recipe(run / "recipe.yaml").task.beta == 4 and load_recipe(run / "recipe.yaml").task.latent == 3


def test_gan_variants_compare_ranks_on_validation_detection(tmp_path: Path) -> None:
    recipe = gan_recipe(tmp_path, train={"eval_every": 6})
    assert ranking_metric(load_recipe(recipe)) == ("detection", "min")
    file = variants(tmp_path / "v.yaml", {"ns": [], "hinge-2": ["task.loss=hinge", "task.d_steps=2"]})
    result = compare(recipe, strategy_file=file, budget="6", out=tmp_path / "compare", echo=print)
    assert [row["variant"] for row in result.rows] == ["ns", "hinge-2"]
    assert all(row["status"] == "ok" for row in result.rows), result.rows
    best = min(result.rows, key=lambda row: row["validation_mean"])
    assert best["rank"] == 1  # lower detection ranks first
    assert "validation detection: decides" in result.table


@pytest.mark.parametrize("recipe", ["vae-breast-cancer.yaml", "vae-digits.yaml"])
def test_the_shipped_vae_variants_make_valid_recipes(recipe: str) -> None:
    found = load_strategy_file(RECIPES / "vae-variants.yaml", 1e-3)
    assert set(found) >= {"beta-1", "beta-4", "latent-2"}
    for variant in found.values():
        made = load_recipe(RECIPES / recipe, ["strategy={\"method\": \"full\"}", *variant.overrides])
        assert made.task.type == "vae"
