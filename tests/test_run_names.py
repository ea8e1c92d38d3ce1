"""Run folder names and --overwrite: a name is one plain folder under output.dir, and --overwrite replaces only a
folder tunelab wrote, never one of the user's (it used to delete whatever the name pointed at)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe
from tunelab.cli import app
from tunelab.errors import RunError
from tunelab.recipe import load_recipe
from tunelab.runfolder import RUN_MARKER, check_name, is_tunelab_run, new_run_dir

BAD_NAMES = ["../escape", "/abs/path", "a/b", "a\\b", "..", ".", ".hidden", "", "sp ace", "a\nb"]


def _precious(folder: Path) -> Path:
    """A folder of the user's, with a file tunelab must never delete."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


def _untouched(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


def test_names_are_one_plain_path_component() -> None:
    for good in ("run", "sentiment-20260101-120000", "lora_r8.v2", "A-1"):
        assert check_name(good) == good
    for bad in BAD_NAMES:
        with pytest.raises(RunError, match="not a plain folder name"):
            check_name(bad)


def test_a_path_as_name_is_refused_and_the_folder_it_names_is_kept(tmp_path: Path, tiny_bert_dir: Path,
                                                                   toy_csv: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv))
    outside = _precious(tmp_path / "escape")
    for name in ("../escape", str(outside)):
        with pytest.raises(RunError, match=f"--name '{name}' is not a plain folder name"):
            new_run_dir(recipe, name, overwrite=True)
    assert _untouched(outside)


def test_overwrite_replaces_only_a_folder_tunelab_wrote(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path, tiny_bert_dir, toy_csv))
    runs = tmp_path / "runs"
    user = _precious(runs / "user")
    forged = _precious(runs / "forged")
    (forged / "recipe.yaml").write_text("name: someone-elses\n")  # a recipe alone does not make a run folder
    for folder in (user, forged):
        with pytest.raises(RunError, match=f"{folder} exists but is not a tunelab run folder.*Move or delete it"):
            new_run_dir(recipe, folder.name, overwrite=True)
    assert _untouched(user) and sorted(p.name for p in forged.iterdir()) == ["notes.txt", "recipe.yaml"]
    # a folder new_run_dir made carries the marker and may be replaced
    made = new_run_dir(recipe, "ours", overwrite=False)
    assert (made / "recipe.yaml").read_text().startswith(RUN_MARKER) and load_recipe(made / "recipe.yaml") == recipe
    (made / "old-result").write_text("x")
    assert not (new_run_dir(recipe, "ours", overwrite=True) / "old-result").exists()
    # runs from before the marker: recipe.yaml with metrics.jsonl or summary.json
    for log in ("metrics.jsonl", "summary.json"):
        legacy = runs / f"legacy-{log}"
        legacy.mkdir()
        (legacy / "recipe.yaml").write_text("name: toy\n")
        (legacy / log).write_text("{}\n")
        assert is_tunelab_run(legacy)
        assert sorted(p.name for p in new_run_dir(recipe, legacy.name, overwrite=True).iterdir()) == ["recipe.yaml"]


def test_train_cli_refuses_a_path_name_before_any_work(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    outside = _precious(tmp_path / "escape")
    out = CliRunner().invoke(app, ["train", str(recipe), "--name", "../escape", "--overwrite"])
    assert out.exit_code == 2 and "not a plain folder name" in out.output
    assert _untouched(outside)


def test_train_cli_overwrite_keeps_a_users_folder(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    user = _precious(tmp_path / "runs" / "mine")
    out = CliRunner().invoke(app, ["train", str(recipe), "--name", "mine", "--overwrite"])
    assert out.exit_code == 2 and "is not a tunelab run folder" in out.output, out.output
    assert _untouched(user)
