"""Recipe validation: every bad key, type or value is refused before any work, naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.errors import RecipeError
from tunelab.recipe import dump_recipe, load_recipe, parse_recipe

BASE = {"model": {"name": "minilm-l6"}, "data": {"dataset": "rotten-tomatoes"}}


def refuse(raw: dict, *overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        parse_recipe(raw, "r.yaml", list(overrides))
    return str(err.value)


def test_defaults_fill_in_and_round_trip(tmp_path: Path) -> None:
    recipe = parse_recipe(dict(BASE))
    assert recipe.strategy.method == "full" and recipe.train.lr == 5e-5 and recipe.task.type == "classification"
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe


def test_unknown_key_names_path_and_suggests() -> None:
    message = refuse(BASE | {"train": {"epocs": 3}})
    assert "train.epocs" in message and "Did you mean 'epochs'" in message


def test_key_in_the_wrong_section_points_to_the_right_one() -> None:
    message = refuse(BASE | {"optim": {"lr": 1e-4}})
    assert "optim.lr" in message and "Did you mean 'train.lr'" in message


def test_synonyms_from_other_tools_are_recognised() -> None:
    assert "Did you mean 'r'" in refuse(BASE | {"strategy": {"method": "lora", "rank": 8}})
    assert "Did you mean 'grad_accum'" in refuse(BASE | {"train": {"gradient_accumulation_steps": 2}})


def test_wrong_type_and_bad_value_are_named() -> None:
    message = refuse(BASE | {"train": {"batch_size": "many", "schedule": "cosin"}})
    assert "train.batch_size" in message and "'many'" in message
    assert "train.schedule" in message and "Did you mean 'cosine'" in message


def test_unknown_strategy_method_suggests() -> None:
    message = refuse(BASE | {"strategy": {"method": "loar"}})
    assert "strategy" in message and "Did you mean 'lora'" in message


def test_batch_must_divide_by_accumulation() -> None:
    assert "multiple of grad_accum" in refuse(BASE | {"train": {"batch_size": 10, "grad_accum": 4}})


def test_checkpointing_every_nth_block_needs_checkpointing_on() -> None:
    assert "without activation_checkpointing: true" in refuse(BASE | {"train": {"activation_checkpointing_every": 2}})
    assert parse_recipe(BASE | {"train": {"activation_checkpointing": True,
                                          "activation_checkpointing_every": 2}}).train.activation_checkpointing_every == 2


def test_exactly_one_data_source() -> None:
    assert "exactly one of data.dataset" in refuse({"model": {"name": "x"}, "data": {}})


def test_set_overrides_are_validated_like_the_file() -> None:
    recipe = parse_recipe(dict(BASE), overrides=["train.lr=3e-5", "strategy.method=freeze", "strategy.bottom=0.5"])
    assert recipe.train.lr == 3e-5 and recipe.strategy.bottom == 0.5
    assert "train.lrr" in refuse(dict(BASE), "train.lrr=1")
    assert "expected KEY=VALUE" in refuse(dict(BASE), "train.lr")


def test_scientific_notation_without_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: m}\ndata: {dataset: d}\ntrain: {lr: 3e-5}\n")
    assert load_recipe(path).train.lr == 3e-5


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(scalar)
