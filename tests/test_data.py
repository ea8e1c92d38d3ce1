"""Data: readers, bad rows (error or counted skip), deterministic stratified splits, labels, truncation."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tests.conftest import MINILM_DIR, toy_rows
from tunelab.api import prepare_data
from tunelab.data.builtin import load_builtin
from tunelab.data.sources import read_file
from tunelab.errors import DataError
from tunelab.recipe import parse_recipe
from tunelab.tasks.classification import ClassificationTask

TOKENIZER = AutoTokenizer.from_pretrained(MINILM_DIR)


def prepare(train: Path, **data: object):  # noqa: ANN201
    raw = {"model": {"name": "minilm-l6"}, "task": {"max_length": 32},
           "data": {"train": str(train), "columns": {"text": "review", "label": "sentiment"}, **data}}
    recipe = parse_recipe(raw)
    task = ClassificationTask(recipe, TOKENIZER)
    return prepare_data(recipe, task), task


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    rows = toy_rows(20)
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        pd.DataFrame(rows).to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    assert [r.values for r in read_file(path)] == rows


def test_bad_rows_stop_the_run_naming_file_and_line(tmp_path: Path) -> None:
    rows = toy_rows(40)
    rows[3]["review"] = "   "
    rows[7]["sentiment"] = "meh"
    path = write_csv(tmp_path / "r.csv", rows)
    with pytest.raises(DataError) as err:
        prepare(path, labels=["neg", "pos"])
    message = str(err.value)
    assert "r.csv, line 5: empty text" in message  # header is line 1, rows[3] is line 5
    assert "r.csv, line 9: unknown label 'meh'" in message
    assert "on_bad_rows: skip" in message


def test_skipped_rows_are_counted_by_reason(tmp_path: Path) -> None:
    rows = toy_rows(40)
    rows[3]["review"] = ""
    rows[5]["review"] = ""
    rows[7]["sentiment"] = "meh"
    path = write_csv(tmp_path / "r.csv", rows)
    data, _ = prepare(path, labels=["neg", "pos"], on_bad_rows="skip")
    assert sum(data.report.skipped.values()) == 3
    assert sum(data.report.rows.values()) == 37
    assert any("empty text" in reason and count == 2 for reason, count in data.report.skipped.items())


def test_over_long_inputs_error_unless_truncation_is_asked(tmp_path: Path) -> None:
    rows = toy_rows(40)
    rows[0]["review"] = " ".join(["wonderful"] * 60)
    path = write_csv(tmp_path / "r.csv", rows)
    with pytest.raises(DataError, match="over task.max_length=32"):
        prepare(path)
    raw = {"model": {"name": "minilm-l6"}, "task": {"max_length": 32, "truncation": True},
           "data": {"train": str(path), "columns": {"text": "review", "label": "sentiment"}}}
    recipe = parse_recipe(raw)
    data = prepare_data(recipe, ClassificationTask(recipe, TOKENIZER))
    assert data.report.truncated == 1
    assert max(len(f["input_ids"]) for split in data.splits.values() for f in split) == 32


def test_splits_are_deterministic_stratified_and_disjoint(tmp_path: Path) -> None:
    rows = toy_rows(200)
    for i in range(0, 200, 4):  # make the classes unequal: 3 neg for 1 pos in a quarter of the rows
        rows[i]["sentiment"] = "neg"
    path = write_csv(tmp_path / "r.csv", rows)
    first, task = prepare(path, split={"validation": 0.2, "test": 0.1})
    again, _ = prepare(path, split={"validation": 0.2, "test": 0.1})
    assert first.splits == again.splits
    sizes = {k: len(v) for k, v in first.splits.items()}
    assert sizes == {"train": 140, "validation": 40, "test": 20}
    share = lambda split: Counter(f["label"] for f in first.splits[split])[task.label_ids["neg"]] / len(first.splits[split])  # noqa: E731
    assert abs(share("validation") - share("train")) < 0.03 and abs(share("test") - share("train")) < 0.05
    as_key = lambda f: (tuple(f["input_ids"]), f["label"])  # noqa: E731
    seen = [set(map(as_key, first.splits[k])) for k in ("train", "validation", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_label_names_are_sorted_or_as_given(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", toy_rows(40))
    _, task = prepare(path)
    assert task.label_names == ["neg", "pos"]
    _, task = prepare(path, labels=["pos", "neg"])
    assert task.label_ids == {"pos": 0, "neg": 1}


def test_single_class_training_data_is_refused(tmp_path: Path) -> None:
    rows = [dict(r, sentiment="pos") for r in toy_rows(20)]
    with pytest.raises(DataError, match="1 distinct label"):
        prepare(write_csv(tmp_path / "r.csv", rows))


def test_rotten_tomatoes_builtin_excludes_plots_and_duplicates() -> None:
    rows, report = load_builtin("rotten-tomatoes")
    labels = Counter(r["label"] for r in rows)
    assert set(labels) == {"fresh", "rotten"}
    assert report["excluded_plot_rows"] > 1000 and report["dropped_duplicate_rows"] > 0
    assert len({r["text"] for r in rows}) == len(rows) == report["rows_kept"]
    assert 0.56 < labels["fresh"] / len(rows) < 0.60


def test_unknown_builtin_suggests_a_name() -> None:
    with pytest.raises(DataError, match="Did you mean 'rotten-tomatoes'"):
        load_builtin("rotten-tomatos")


# ---- CSV fields over several lines ------------------------------------------------------------------------------

STRAY_QUOTE = 'review,sentiment\n"great film,pos\nbad film,neg\nawful plot,neg\n"so-so" ending,pos\nfine,neg\n'


def test_a_stray_quote_that_swallows_rows_is_named_with_its_lines(tmp_path: Path) -> None:
    """The issue's file: legal CSV read as 2 rows, of which one swallowed 3 lines. It used to end in 'a split is
    empty'; now the swallowing field is named by file and line range."""
    path = tmp_path / "stray.csv"
    path.write_text(STRAY_QUOTE, encoding="utf-8")
    with pytest.raises(DataError, match=r"stray\.csv, lines 2-5: a quoted field spans these lines and holds the "
                                        r"delimiter \(a comma\), as if a stray opening quote") as err:
        prepare(path)
    assert "data.multiline_fields: keep" in str(err.value)


def test_multiline_fields_are_counted_and_their_lines_named(tmp_path: Path) -> None:
    rows = toy_rows(40)
    rows[0]["review"] = "good film\nreally good"  # lines 2-3: spans lines, no delimiter: kept, named
    rows[5]["review"] = "bad, dull\nand flat"     # lines 8-9: spans lines and holds a comma: a bad row by default
    path = write_csv(tmp_path / "r.csv", rows)
    assert [(r.line, r.last_line) for r in read_file(path)][:7] == [(2, 3), (4, 0), (5, 0), (6, 0), (7, 0), (8, 9), (10, 0)]
    with pytest.warns(UserWarning, match=r"r\.csv: 1 row\(s\) have a quoted field that spans several lines \(lines 2-3\)"):
        data, _ = prepare(path, on_bad_rows="skip")
    assert data.report.source == {"train_rows_spanning_lines": 2}
    assert [n for reason, n in data.report.skipped.items() if "holds the delimiter" in reason] == [1]
    assert sum(data.report.rows.values()) == 39
    with pytest.warns(UserWarning, match=r"2 row\(s\) .* \(lines 2-3, 8-9\)"):
        data, _ = prepare(path, multiline_fields="keep")
    assert sum(data.report.rows.values()) == 40 and not data.report.skipped
