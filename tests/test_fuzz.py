"""Hostile and broken inputs: property-based tests and a fuzzing pass over the recipe loader and every data reader.

The promise: whatever bytes, YAML or table a user brings, tunelab ends in one of its own errors (naming the file,
line or key) or in a counted skip, never in a traceback from deep inside a library and never in a silently
smaller dataset. Every test here states that as an invariant and lets hypothesis hunt for a counter-example.

Time is bounded for CI (``max_examples`` per test, a per-example deadline, derandomized so CI runs the same
inputs every time). For a longer hunt: ``TUNELAB_FUZZ_SCALE=20 pytest tests/test_fuzz.py`` (randomized).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import string
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MINILM_DIR
from tunelab.data.sources import read_file
from tunelab.errors import DataError, RecipeError
from tunelab.recipe import Recipe, load_recipe, parse_recipe

SCALE = float(os.environ.get("TUNELAB_FUZZ_SCALE", "1"))
TRIED: Counter[str] = Counter()  # inputs tried per test, reported by the last test


def bounded(examples: int) -> settings:
    """CI-sized settings: a fixed number of examples, each with a deadline (a hang is a failure, too)."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=timedelta(seconds=10), derandomize=SCALE == 1,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_names = itertools.count()


def write(folder: Path, suffix: str, data: bytes) -> Path:
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


def read_or_data_error(path: Path) -> list | None:
    """read_file's whole contract: rows, or a DataError that names the file. Anything else fails the test."""
    try:
        return read_file(path)
    except DataError as err:
        assert path.name in str(err), f"the error does not name the file: {err}"
        return None


# ---- data readers on random and damaged bytes -------------------------------------------------------------------

SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".parquet"]


@bounded(400)
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_end_in_rows_or_a_data_error(workdir: Path, data: bytes, suffix: str) -> None:
    TRIED["random bytes"] += 1
    read_or_data_error(write(workdir, suffix, data))


# no NUL (refused on purpose) and no BOM (a leading one is the encoding mark UTF-8-sig readers strip)
cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"), max_size=30)
tables = st.integers(1, 4).flatmap(
    lambda width: st.tuples(st.lists(cells, min_size=width, max_size=width, unique=True),
                            st.lists(st.lists(cells, min_size=width, max_size=width), max_size=8)))


def csv_bytes(header: list[str], rows: list[list[str]], delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


@bounded(200)
@given(table=tables, delimiter=st.sampled_from([",", "\t"]))
def test_any_table_written_as_csv_reads_back_whole(workdir: Path, table: tuple, delimiter: str) -> None:
    """No silently smaller dataset: quotes, delimiters, newlines and any Unicode inside fields survive."""
    TRIED["csv round trip"] += 1
    header, rows = table
    got = read_or_data_error(write(workdir, ".csv" if delimiter == "," else ".tsv", csv_bytes(header, rows, delimiter)))
    assert got is not None, "a valid table was refused"
    assert [r.values for r in got] == [dict(zip(header, row)) for row in rows]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | cells,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(cells, inner, max_size=3), max_leaves=8)


@bounded(200)
@given(objects=st.lists(st.dictionaries(cells, json_values, max_size=4), max_size=6), cut=st.integers(0, 10**6))
def test_jsonl_reads_back_whole_and_a_torn_copy_fails_loudly(workdir: Path, objects: list[dict], cut: int) -> None:
    TRIED["jsonl round trip + truncation"] += 1
    text = "".join(json.dumps(o) + "\n" for o in objects).encode("utf-8")
    got = read_or_data_error(write(workdir, ".jsonl", text))
    assert got is not None and [r.values for r in got] == objects
    torn = text[: cut % (len(text) + 1)]
    got = read_or_data_error(write(workdir, ".jsonl", torn))
    if got is not None:  # only a cut at a line's end may read, and then as exactly the whole lines before it
        assert torn == b"" or torn.endswith((b"\n", b"}")), torn[-40:]
        assert [r.values for r in got] == objects[: torn.count(b"\n") + (not torn.endswith(b"\n") and torn != b"")]


@bounded(120)
@given(table=tables, encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
def test_wrong_encodings_are_named_not_read_as_garbage(workdir: Path, table: tuple, encoding: str) -> None:
    """Bytes that are not NUL-free UTF-8 are an error naming the file; bytes that are (ASCII-only Latin-1, or the
    rare Latin-1 text that happens to spell valid UTF-8, which no reader can tell apart) read whole."""
    TRIED["wrong encodings"] += 1
    header, rows = table
    try:
        data = csv_bytes(header, rows, ",").decode("utf-8").encode(encoding)
    except UnicodeEncodeError:
        return
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    got = read_or_data_error(write(workdir, ".csv", data))
    if text is None or "\x00" in text:
        assert got is None, "undecodable bytes were read"
    else:
        assert got is not None and len(got) == len(rows)


@pytest.fixture(scope="module")
def good_parquet(workdir: Path) -> bytes:
    table = pa.table({"review": ["a fine film", "dull", "great fun", "a mess"] * 5, "sentiment": ["pos", "neg"] * 10,
                      "score": list(range(20))})
    path = workdir / "good.parquet"
    pq.write_table(table, path)
    return path.read_bytes()


@bounded(200)
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4))
def test_damaged_parquet_ends_in_a_data_error(workdir: Path, good_parquet: bytes, cut: int, flips: list) -> None:
    TRIED["damaged parquet"] += 1
    data = bytearray(good_parquet)
    for position, xor in flips:
        data[position % len(data)] ^= xor
    data = data[: len(data) - cut % 64] if cut % 3 == 0 else data
    read_or_data_error(write(workdir, ".parquet", bytes(data)))


@pytest.mark.parametrize("data, message", [
    (b"[" * 100_000 + b"\n", "nested too deeply"),
    (b'{"a": ' + b"1" * 5000 + b"}\n", "unreadable JSON value"),
    (b'{"review": "\\ud800 x", "sentiment": "pos"}\n', "without its pair"),
    (b'[{"review": "x", "sentiment": "pos"}]\n', "one JSON object per line"),
    (b'{"review": "x"}\n7\n', "line 2: expected a JSON object"),
])
def test_jsonl_edge_cases_name_the_line(workdir: Path, data: bytes, message: str) -> None:
    TRIED["hand-written cases"] += 1
    with pytest.raises(DataError, match=message):
        read_file(write(workdir, ".jsonl", data))


@pytest.mark.parametrize("data, message", [
    ("review,sentiment\ncafé,pos\n".encode("utf-16"), "UTF-16 encoded"),
    ("review,sentiment\ncafe,pos\n".encode("utf-16-be"), "NUL bytes"),
    ("review,sentiment\nok,pos\ncafé,pos\n".encode("latin-1"), "line 3: not UTF-8 text .*Latin-1"),
    (b"review,sentiment\n" + b"good,pos\n" * 1000 + b'"x\x00y",pos\n', "line 1002: contains a NUL"),
    (b"review,sentiment\nfine,pos\ntoo,many,fields\n", "line 3: 3 fields where the header has 2"),
    (b"review,review\nx,y\n", "repeated column names"),
    (b"", "the file is empty"),
])
def test_csv_edge_cases_name_the_line(workdir: Path, data: bytes, message: str) -> None:
    TRIED["hand-written cases"] += 1
    with pytest.raises(DataError, match=message):
        read_file(write(workdir, ".csv", data))


def test_huge_field_is_read_whole(workdir: Path) -> None:
    TRIED["hand-written cases"] += 1
    big = "word " * 400_000  # 2 MB in one field, over csv's default field limit of 128 KB
    rows = read_file(write(workdir, ".csv", csv_bytes(["review", "sentiment"], [[big, "pos"]], ",")))
    assert rows[0].values["review"] == big


# ---- the whole data pipeline: every row is used or counted ------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM_DIR)


WORDS = ["good", "bad", "fine", "dull", "a", "film", "très", "好", "🙂"]
text_values = st.one_of(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join),
                        st.sampled_from(["", "   ", None, 3, 2.5, True, ["x"], {"k": "v"}]))
label_values = st.one_of(st.sampled_from(["pos", "neg", "meh", " pos ", "", "0", "1"]),
                         st.sampled_from([0, 1, 2, 1.0, 0.5, None, True, [1], float("inf")]))
rows_strategy = st.lists(st.fixed_dictionaries({}, optional={"review": text_values, "sentiment": label_values,
                                                             "extra": cells}), max_size=30)


def write_rows(folder: Path, rows: list[dict], as_csv: bool) -> Path:
    if as_csv:  # CSV has only strings: what a spreadsheet would write
        header = ["review", "sentiment", "extra"]
        table = [["" if r.get(h) is None else str(r.get(h)) for h in header] for r in rows]
        return write(folder, ".csv", csv_bytes(header, table, ","))
    return write(folder, ".jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


@bounded(80)
@given(train=rows_strategy, test=st.none() | rows_strategy, as_csv=st.booleans(), skip=st.booleans(),
       shares=st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99]), st.sampled_from([0.0, 0.1, 0.5])),
       labels=st.none() | st.sampled_from([["pos", "neg"], ["neg", "pos", "meh"], ["pos", "pos"]]),
       truncation=st.booleans())
def test_every_row_is_kept_or_counted(workdir: Path, tokenizer: Any, train: list, test: list | None, as_csv: bool,
                                      skip: bool, shares: tuple, labels: list | None, truncation: bool) -> None:
    """Mixed types, missing columns, empty texts, unknown labels, labels only in the test file, splits larger than
    the data, over-long texts: either a clear error, or rows kept + rows skipped == rows in the files."""
    from tunelab.api import prepare_data
    from tunelab.tasks import build_task

    TRIED["data pipeline tables"] += 1
    data: dict[str, Any] = {"train": str(write_rows(workdir, train, as_csv)),
                            "columns": {"text": "review", "label": "sentiment"}, "labels": labels,
                            "on_bad_rows": "skip" if skip else "error",
                            "split": {"validation": shares[0], "test": shares[1]}}
    if test is not None:
        data["test"] = str(write_rows(workdir, test, as_csv))
    recipe = parse_recipe({"model": {"name": str(MINILM_DIR)}, "task": {"max_length": 24, "truncation": truncation},
                           "data": data})
    try:
        prepared = prepare_data(recipe, build_task(recipe, tokenizer))
    except DataError as err:
        assert str(err).strip(), "an empty error message"
        return
    report = prepared.report
    given_rows = len(train) + (len(test) if test is not None else 0)
    assert sum(report.rows.values()) + sum(report.skipped.values()) == given_rows
    assert all(prepared.splits[name] for name in ("train", "validation")), "an empty split went on to training"
    if not skip:
        assert not report.skipped


# ---- the recipe loader -----------------------------------------------------------------------------------------

def load_or_recipe_error(path: Path) -> Recipe | None:
    try:
        return load_recipe(path)
    except RecipeError as err:
        assert path.name in str(err), f"the error does not name the recipe file: {err}"
        return None


@bounded(300)
@given(data=st.binary(max_size=1000))
def test_recipe_from_random_bytes(workdir: Path, data: bytes) -> None:
    TRIED["recipe random bytes"] += 1
    load_or_recipe_error(write(workdir, ".yaml", data))


yaml_text = st.text(alphabet=string.printable + "é→&*!|>-[]{}:,?'\"#%@`", max_size=300)


@bounded(300)
@given(text=yaml_text)
def test_recipe_from_random_yaml_text(workdir: Path, text: str) -> None:
    TRIED["recipe random YAML text"] += 1
    load_or_recipe_error(write(workdir, ".yaml", text.encode("utf-8")))


VALID = {"name": "toy", "model": {"name": "minilm-l6"}, "data": {"train": "reviews.csv", "columns": {"text": "review"}},
         "strategy": {"method": "lora", "r": 8}, "train": {"lr": 1e-4, "batch_size": 8, "early_stopping": {"patience": 2}},
         "eval": {"metric": "accuracy"}}
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.binary(max_size=4)
structures = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=10)


def paths(raw: dict, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    for key, value in raw.items():
        found += paths(value, (*prefix, key)) if isinstance(value, dict) else [(*prefix, key)]
    return found


@bounded(400)
@given(where=st.sampled_from(paths(VALID)), value=structures, new_key=st.booleans())
def test_recipe_with_one_damaged_key_names_it(where: tuple, value: Any, new_key: bool) -> None:
    """Replace one value of a valid recipe (or add an unknown key beside it): the error names that key path."""
    TRIED["recipe damaged structures"] += 1
    raw = json.loads(json.dumps(VALID))
    node = raw
    for part in where[:-1]:
        node = node[part]
    key = f"{where[-1]}_x" if new_key else where[-1]
    node[key] = value
    try:
        parse_recipe(raw, "fuzz.yaml")
    except RecipeError as err:
        assert "fuzz.yaml" in str(err)
        named = ".".join(map(str, (*where[:-1], key))) if new_key else str(where[0])
        assert named in str(err), str(err)
    else:
        assert not new_key, "an unknown key was accepted"


@bounded(300)
@given(raw=structures, overrides=st.lists(st.text(max_size=20), max_size=3))
def test_recipe_from_any_structure_and_overrides(raw: Any, overrides: list[str]) -> None:
    TRIED["recipe random structures + --set"] += 1
    try:
        parse_recipe(raw, "fuzz.yaml", overrides)
    except RecipeError:
        pass


@pytest.mark.parametrize("text", [
    "[" * 10_000,
    "a: &x [*x]\n",
    "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")),
    "model: !!python/object/apply:os.system ['echo hacked']\n",
])
def test_hostile_yaml_is_refused_quickly(workdir: Path, text: str) -> None:
    TRIED["hand-written cases"] += 1
    with pytest.raises(RecipeError):
        load_recipe(write(workdir, ".yaml", text.encode()))


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=[", "not valid YAML"), ("=3", "not a key path"), ("train..lr=1", "not a key path"), ("lr", "KEY=VALUE"),
])
def test_bad_overrides_are_recipe_errors(assignment: str, message: str) -> None:
    TRIED["hand-written cases"] += 1
    with pytest.raises(RecipeError, match=message):
        parse_recipe(dict(VALID), "r.yaml", [assignment])


def test_zz_report_inputs_tried() -> None:
    """Runs last (file order): says how many inputs the fuzz pass tried, so the count is visible in CI logs."""
    total = sum(TRIED.values())
    print(f"\nfuzz inputs tried: {total} " + json.dumps(dict(TRIED)))
    if len(TRIED) >= 12:  # the whole file ran (not a -k selection)
        assert total >= 2000
