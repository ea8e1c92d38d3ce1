"""Data: readers, bad rows (error or counted skip), deterministic stratified splits and samples, labels, truncation."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tests.conftest import MINILM_DIR, toy_rows
from tunelab.api import prepare_data
from tunelab.data.builtin import BUILTIN, load_builtin
from tunelab.data.sample import stratified_order
from tunelab.data.sources import Row, read_file
from tunelab.errors import DataError
from tunelab.recipe import load_recipe, parse_recipe
from tunelab.tasks.base import Prepared
from tunelab.tasks.classification import ClassificationTask

TOKENIZER = AutoTokenizer.from_pretrained(MINILM_DIR)
ROOT = Path(__file__).resolve().parents[1]


def prepare(train: Path, eval: dict | None = None, **data: object):  # noqa: ANN201, A002
    raw = {"model": {"name": "minilm-l6"}, "task": {"max_length": 32}, "eval": eval or {},
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


# ---- data.limit and eval.max_examples: seeded stratified samples, counted ---------------------------------------

def label_sorted(n: int, seed: int = 0, neg_share: float = 0.5) -> list[dict[str, str]]:
    """Rows sorted by label, as exports often are: the first rows are all 'neg'."""
    rows = toy_rows(n, seed)
    for i, row in enumerate(rows):
        row["sentiment"] = "neg" if i < n * neg_share else "pos"
    return sorted(rows, key=lambda r: r["sentiment"])


def label_counts(task: ClassificationTask, features: list[dict]) -> dict[str, int]:
    return {task.label_names[k]: n for k, n in sorted(Counter(f["label"] for f in features).items())}


def test_limit_samples_per_split_files_stratified_and_counts_the_rest(tmp_path: Path) -> None:
    """data.limit used to keep the first N rows of a file given per split: a one-class training set here."""
    train = write_csv(tmp_path / "train.csv", label_sorted(200))
    validation = write_csv(tmp_path / "validation.csv", toy_rows(30, seed=1))
    test = write_csv(tmp_path / "test.csv", toy_rows(30, seed=2))
    data, task = prepare(train, validation=str(validation), test=str(test), limit=50)
    assert label_counts(task, data.splits["train"]) == {"neg": 25, "pos": 25}
    reason = "train: left out by data.limit=50 (a seeded sample stratified by label; 50 of the split's 200 rows used)"
    assert data.report.skipped == {reason: 150} and data.report.sampled_from == {"train": 200}
    assert sum(data.report.rows.values()) + sum(data.report.skipped.values()) == 260
    again, _ = prepare(train, validation=str(validation), test=str(test), limit=50)
    assert again.splits == data.splits


def test_max_examples_samples_held_out_splits_stratified_and_reports_full_size(tmp_path: Path) -> None:
    """eval.max_examples used to keep the first N held-out rows and say nothing: here 20 'neg' of a 3:1 split."""
    train = write_csv(tmp_path / "train.csv", toy_rows(100))
    validation = write_csv(tmp_path / "validation.csv", label_sorted(80, seed=1, neg_share=0.75))
    data, task = prepare(train, eval={"max_examples": 20}, validation=str(validation), split={"test": 0.2})
    assert label_counts(task, data.splits["validation"]) == {"neg": 15, "pos": 5}
    assert data.report.rows == {"train": 80, "validation": 20, "test": 20}
    assert data.report.sampled_from == {"validation": 80}  # test has exactly 20 rows: nothing left out
    assert data.report.skipped == {"validation: left out by eval.max_examples=20 (a seeded sample stratified by "
                                   "label; 20 of the split's 80 rows evaluated)": 60}


def test_a_sample_replaces_rows_the_task_skips(tmp_path: Path) -> None:
    """Over-long rows met in the sample are skipped (counted) and the next rows of the order take their place."""
    rows = label_sorted(120, seed=3)
    for i in range(0, 120, 10):
        rows[i]["review"] = " ".join(["wonderful"] * 60)  # over task.max_length=32
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "validation.csv", toy_rows(20, seed=1))
    data, _ = prepare(train, on_bad_rows="skip", limit=40, validation=str(validation), split={"test": 0.0})
    assert data.report.rows == {"train": 40, "validation": 20}
    too_long = sum(n for reason, n in data.report.skipped.items() if "max_length" in reason)
    left_out = sum(n for reason, n in data.report.skipped.items() if "left out by data.limit=40" in reason)
    assert too_long > 0 and 40 + too_long + left_out == 120


def test_stratified_order_keeps_every_prefix_in_proportion() -> None:
    sizes = {"a": 50, "b": 30, "c": 7, "d": 1}
    rows = [Row({"k": k}, "mem", i) for k, n in sizes.items() for i in range(n)]
    order = stratified_order(rows, lambda row: row.values["k"], random.Random(0))
    assert sorted(map(id, order)) == sorted(map(id, rows))
    for prefix in range(1, len(rows) + 1):
        seen = Counter(row.values["k"] for row in order[:prefix])
        for key, n in sizes.items():
            assert abs(seen[key] - prefix * n / len(rows)) < 2, (prefix, key, seen)


# ---- built-in datasets that come split --------------------------------------------------------------------------

@pytest.fixture
def presplit(monkeypatch: pytest.MonkeyPatch) -> str:
    """A built-in dataset that comes split (like bible-en-es and tech-support), with a label-sorted train split."""
    def load() -> tuple[dict[str, list[dict]], dict[str, int]]:
        as_rows = lambda rows: [{"text": r["review"], "label": r["sentiment"]} for r in rows]  # noqa: E731
        return {"train": as_rows(label_sorted(120)), "validation": as_rows(toy_rows(20, 1)),
                "test": as_rows(toy_rows(20, 2))}, {"rows_read": 160}
    monkeypatch.setitem(BUILTIN, "toy-split", (load, "a toy dataset that comes split"))
    return "toy-split"


def prepare_builtin(name: str, **data: object):  # noqa: ANN201
    recipe = parse_recipe({"model": {"name": "minilm-l6"}, "task": {"max_length": 32}, "data": {"dataset": name, **data}})
    task = ClassificationTask(recipe, TOKENIZER)
    return prepare_data(recipe, task), task


def test_limit_samples_a_builtin_that_comes_split(presplit: str) -> None:
    data, task = prepare_builtin(presplit, limit=30)
    assert label_counts(task, data.splits["train"]) == {"neg": 15, "pos": 15}
    assert sum(data.report.skipped.values()) == 90 and data.report.rows == {"train": 30, "validation": 20, "test": 20}


def test_data_split_is_refused_for_a_builtin_that_comes_split(presplit: str) -> None:
    with pytest.raises(DataError, match=r"data\.split: the built-in dataset 'toy-split' comes already split "
                                        r"\(train 120, validation 20, test 20 rows.*remove it.*data\.limit"):
        prepare_builtin(presplit, split={"validation": 0.3})
    prepare_builtin(presplit, split={"validation": 0.1, "test": 0.1})  # the defaults (a resolved recipe says them)


def test_a_share_of_a_split_given_as_a_file_is_refused(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", toy_rows(60))
    test = write_csv(tmp_path / "test.csv", toy_rows(20, seed=1))
    with pytest.raises(DataError, match=r"data\.split\.test=0\.3 cannot apply: the test rows come from data\.test"):
        prepare(train, test=str(test), split={"validation": 0.2, "test": 0.3})
    data, _ = prepare(train, test=str(test), split={"validation": 0.2})
    assert data.report.rows == {"train": 48, "test": 20, "validation": 12}


def test_stratify_by_names_a_missing_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.stratify_by: no training row has a column 'topic' \(columns found: "
                                        r"review, sentiment\)"):
        prepare(write_csv(tmp_path / "r.csv", toy_rows(40)), stratify_by="topic")


class TopicOnly:
    """A stand-in task that keeps each row's topic: the support recipe's sample without tokenizing 900 chats."""

    def check_row(self, row: Row) -> str | None:
        return None

    def featurize(self, rows: list[Row]) -> Prepared:
        return Prepared([{"topic": row.values["topic"]} for row in rows])


def test_support_recipe_trains_and_tests_on_tech_support_chats() -> None:
    """The chats come sorted by topic (file order): the first 480 train and first 120 test chats held no
    tech-support conversation. The recipe's samples now hold every topic in proportion."""
    recipe = load_recipe(ROOT / "recipes" / "support.yaml")
    data = prepare_data(recipe, TopicOnly())
    mix = {name: Counter(f["topic"] for f in features) for name, features in data.splits.items()}
    assert len(data.splits["train"]) == 480 and len(data.splits["test"]) == 120
    assert mix["train"]["tech_support"] >= 4 and mix["test"]["tech_support"] >= 1
    assert len(mix["train"]) == 21  # every topic
