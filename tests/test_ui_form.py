"""The web app's form, without a browser: fields come from the recipe schema, overrides hold only what changed and
read back as the values typed, and pydantic's errors land on the field they are about."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.recipe import Recipe, load_recipe
from tunelab.ui import form

BASE = {"name": "toy", "model": {"name": "minilm-l6"}, "data": {"dataset": "rotten-tomatoes"},
        "strategy": {"method": "lora", "r": 4}, "train": {"lr": 1e-3}}


def test_every_recipe_key_is_a_field_with_its_help_and_advanced_ones_are_folded() -> None:
    fields = form.fields()
    paths = {f["path"] for f in fields}
    assert {"model.name", "train.lr", "data.split.validation", "task.head.dropout", "strategy.r", "optim.betas",
            "train.early_stopping.patience"} <= paths
    assert "output.dir" not in paths  # the app sets it
    lr = next(f for f in fields if f["path"] == "train.lr")
    assert lr["help"].startswith(Recipe.model_fields["train"].annotation.model_fields["lr"].description)
    assert not lr["advanced"] and next(f for f in fields if f["path"] == "optim.weight_decay")["advanced"]
    rank = next(f for f in fields if f["path"] == "strategy.r")
    assert rank["when"] == {"strategy.method": ["dora", "lora"]}


def test_only_changed_keys_become_overrides_and_read_back_as_typed(tmp_path: Path) -> None:
    texts = form.base_texts(BASE)
    assert texts["train.lr"] == "0.001" and texts["strategy.r"] == "4"
    values = {**texts, "train.lr": "3e-4", "model.name": "123", "data.limit": "", "strategy.r": "4"}
    sets, errors = form.overrides(BASE, values)
    assert not errors and sorted(sets) == ['model.name="123"', "train.lr=3e-4"]  # a name like a number stays a string
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    recipe = load_recipe(base, sets)
    assert recipe.train.lr == 3e-4 and recipe.model.name == "123" and recipe.strategy.r == 4
    assert form.validate(BASE, sets) == {}


def test_changing_the_method_replaces_the_whole_strategy_section(tmp_path: Path) -> None:
    values = {**form.base_texts(BASE), "strategy.method": "freeze", "strategy.bottom": "0.5"}
    sets, _ = form.overrides(BASE, values)
    assert sets == ['strategy={"method": "freeze", "bottom": 0.5}']  # lora's r would be an unknown key of freeze
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    assert load_recipe(base, sets).strategy.method == "freeze"


def test_errors_land_on_their_field() -> None:
    errors = form.validate(BASE, ["train.lr=fast", "strategy.r=0"])
    assert "valid number" in errors["train.lr"]
    assert "greater than 0" in errors["strategy.r"]  # pydantic's path strategy.lora.r, without the tag
    across = form.validate(BASE, ["train.batch_size=30", "train.grad_accum=4"])
    assert "multiple of grad_accum" in across["train"]  # a check across keys: shown at its section
    assert "method" in form.validate(BASE, ['strategy={"method": "lorax"}'])["strategy.method"]
    assert "Field required" in form.validate({"data": {"dataset": "x"}}, [])["model"]
    sets, errors = form.overrides(BASE, {**form.base_texts(BASE), "data.columns": "{text: a"})
    assert "not valid YAML" in form.validate(BASE, sets)["data.columns"]


def test_command_is_what_a_person_would_type() -> None:
    argv = form.command("recipes/x.yaml", ['strategy={"method": "lora"}', "train.lr=1e-3"], "runs", "a")
    assert form.shown(argv) == ("tunelab train recipes/x.yaml --set 'strategy={\"method\": \"lora\"}' "
                                "--set train.lr=1e-3 --set output.dir=runs --name a")
