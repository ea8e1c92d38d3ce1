"""Hostile and broken inputs: property-based tests and a fuzzing pass over the recipe loader and every data reader.

The promise: whatever bytes, YAML or table a user brings, tunelab ends in one of its own errors (naming the file,
line or key) or in a counted skip, never in a traceback from deep inside a library and never in a silently
smaller dataset. Every test here states that as an invariant and lets hypothesis hunt for a counter-example.

A property test is only as good as the inputs that reach its assertions: the generators below make mostly valid
tables and recipes with a few damaged parts, and the tests whose inputs can stop early (an error they allow) count
how many got past that exit and assert the count is substantial.

Time is bounded for CI: ``max_examples`` per test, derandomized so CI runs the same inputs every time, and a
per-test timeout (pytest-timeout), which is what stops a hang: hypothesis' own deadline only judges an example after
it has finished. For a longer hunt: ``TUNELAB_FUZZ_SCALE=20 pytest tests/test_fuzz.py`` (randomized).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import os
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tests.conftest import MINILM_DIR
from tunelab.api import prepare_data
from tunelab.data.sources import read_file
from tunelab.errors import DataError, RecipeError
from tunelab.recipe import Recipe, load_recipe, parse_recipe
from tunelab.tasks import build_task

SCALE = float(os.environ.get("TUNELAB_FUZZ_SCALE", "1"))
TRIED: Counter[str] = Counter()  # inputs tried per test, reported (and checked) by the last test
REACHED: Counter[str] = Counter()  # inputs that got past a test's early exits, by what they reached


def bounded(examples: int) -> settings:
    """CI-sized settings: a fixed number of examples, derandomized at scale 1.

    No hypothesis deadline: it cannot stop a hang (it judges an example once it has finished), and on a shared CI
    machine it fails slow examples at random. ``timeout`` is what stops a hang.
    """
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=SCALE == 1,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def timeout(seconds: float) -> pytest.MarkDecorator:
    """A per-test timeout (pytest-timeout), growing with TUNELAB_FUZZ_SCALE: a hang fails the test and CI goes on."""
    return pytest.mark.timeout(seconds * max(1.0, SCALE))


def substantial(reached: int, tried: int, share: float, what: str) -> None:
    """The inputs that got past the early exits: too few, and the assertions after them prove nothing."""
    REACHED[what] = reached
    assert tried and reached >= share * tried, f"only {reached} of {tried} inputs {what}"


pytestmark = timeout(120)  # every test here; the data pipeline test sets its own


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
latin_cells = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0xFF), max_size=30)  # Latin-1 can spell


def tables_of(cell: st.SearchStrategy[str]) -> st.SearchStrategy[tuple]:
    return st.integers(1, 4).flatmap(
        lambda width: st.tuples(st.lists(cell, min_size=width, max_size=width, unique=True),
                                st.lists(st.lists(cell, min_size=width, max_size=width), max_size=8)))


tables = tables_of(cells)


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
    for before, after in zip(got, got[1:]):  # rows follow each other: no line named twice or left out
        assert after.line == (before.last_line or before.line) + 1, (before.where(), after.where())


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


def test_wrong_encodings_are_named_not_read_as_garbage(workdir: Path) -> None:
    """Bytes that are not NUL-free UTF-8 are an error naming the file; bytes that are (ASCII-only Latin-1, or the
    rare Latin-1 text that happens to spell valid UTF-8, which no reader can tell apart) read whole."""
    reached: Counter[str] = Counter()

    @bounded(120)
    @given(table=tables_of(latin_cells) | tables, encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
    def check(table: tuple, encoding: str) -> None:
        reached["tried"] += 1
        header, rows = table
        try:
            data = csv_bytes(header, rows, ",").decode("utf-8").encode(encoding)
        except UnicodeEncodeError:  # a table Latin-1 cannot spell: nothing to test
            return
        reached["encoded"] += 1
        try:
            text: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        got = read_or_data_error(write(workdir, ".csv", data))
        if text is None or "\x00" in text:
            assert got is None, "undecodable bytes were read"
        else:
            assert got is not None and len(got) == len(rows)

    check()
    TRIED["wrong encodings"] += reached["tried"]
    substantial(reached["encoded"], reached["tried"], 0.5, "could be written in the wrong encoding")


@pytest.fixture(scope="module")
def good_parquet(workdir: Path) -> tuple[bytes, list[list[Any]]]:
    """A small Parquet file written with page checksums (as parquet-mr writes by default), and its values."""
    table = pa.table({"review": ["a fine film", "dull", "great fun", "a mess"] * 5, "sentiment": ["pos", "neg"] * 10,
                      "score": list(range(20))})
    path = workdir / "good.parquet"
    pq.write_table(table, path, write_page_checksum=True)
    return path.read_bytes(), [list(row.values()) for row in table.to_pylist()]


def as_text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def test_damaged_parquet_is_refused_or_reads_back_the_same_values(workdir: Path, good_parquet: tuple) -> None:
    """What Parquet can detect: damage to its pages, when the writer stored page checksums (the reader verifies
    them). Its footer has no checksum: a damaged column name or logical type (string read back as bytes) can pass
    unseen, and the run then stops at the missing column or the text that is not a string. So every damaged copy
    is refused with an error naming the file, or reads back the very same values, at most under a damaged name or
    as the same bytes."""
    good, values = good_parquet
    reached: Counter[str] = Counter()

    @bounded(200)
    @given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4))
    def check(cut: int, flips: list) -> None:
        reached["tried"] += 1
        data = bytearray(good)
        for position, xor in flips:
            data[position % len(data)] ^= xor
        data = data[: len(data) - cut % 64] if cut % 3 == 0 else data
        rows = read_or_data_error(write(workdir, ".parquet", bytes(data)))
        if rows is None:
            reached["refused"] += 1
        else:
            reached["read back"] += 1
            assert [[as_text(v) for v in row.values.values()] for row in rows] == values, "damaged values read silently"

    check()
    TRIED["damaged parquet"] += reached["tried"]
    substantial(reached["refused"], reached["tried"], 0.5, "were refused")
    substantial(reached["read back"], reached["tried"], 0.05, "read back (the value check ran)")


def test_a_flipped_byte_in_a_checksummed_page_is_refused(workdir: Path, good_parquet: tuple) -> None:
    """Unverified, this copy reads back 'great fun' as 'greaT fun' without a word."""
    TRIED["hand-written cases"] += 1
    good, _ = good_parquet
    data = bytearray(good)
    data[good.index(b"great fun") + 4] ^= 0x20
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_file(write(workdir, ".parquet", bytes(data)))


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
    return AutoTokenizer.from_pretrained(MINILM_DIR)


WORDS = ["good", "bad", "fine", "dull", "a", "film", "très", "好", "🙂"]
text_values = st.one_of(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join),
                        st.sampled_from(["", "   ", None, 3, 2.5, True, ["x"], {"k": "v"}]))
label_values = st.one_of(st.sampled_from(["pos", "neg", "meh", " pos ", "", "0", "1"]),
                         st.sampled_from([0, 1, 2, 1.0, 0.5, None, True, [1], float("inf")]))
bad_rows = st.fixed_dictionaries({}, optional={"review": text_values, "sentiment": label_values, "extra": cells})
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join)
label_patterns = st.lists(st.sampled_from(["pos", "neg"]), min_size=2, max_size=5).filter(lambda p: len(set(p)) == 2)


def make_table(texts: list[str], pattern: list[str], damage: list[tuple[int, dict]]) -> list[dict]:
    """Rows labelled by a repeating pattern (both labels, in varying shares), with damaged rows put in among them."""
    rows: list[dict] = [{"review": text, "sentiment": pattern[i % len(pattern)]} for i, text in enumerate(texts)]
    for position, row in damage:
        rows.insert(position % (len(rows) + 1), row)
    return rows


def tables_of_rows(min_size: int) -> st.SearchStrategy[list[dict]]:
    """Mostly valid tables; a third of them hold one to three damaged rows (mixed types, missing columns, empty
    texts, unknown labels)."""
    damage = one_in(3, st.lists(st.tuples(st.integers(0, 10**6), bad_rows), min_size=1, max_size=3), st.just([]))
    return st.builds(make_table, st.lists(texts, min_size=min_size, max_size=60), label_patterns, damage)


def write_rows(folder: Path, rows: list[dict], as_csv: bool) -> Path:
    if as_csv:  # CSV has only strings: what a spreadsheet would write
        header = ["review", "sentiment", "extra"]
        table = [["" if r.get(h) is None else str(r.get(h)) for h in header] for r in rows]
        return write(folder, ".csv", csv_bytes(header, table, ","))
    return write(folder, ".jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


def left_out(report: Any, split: str) -> int:
    return sum(n for reason, n in report.skipped.items() if reason.startswith(f"{split}: left out by "))


def as_keys(features: list[dict]) -> Counter[str]:
    return Counter(json.dumps(f, sort_keys=True) for f in features)


@timeout(300)
def test_every_row_is_kept_or_counted(workdir: Path, tokenizer: Any) -> None:
    """Mostly valid tables (some label-sorted, some with damaged rows: mixed types, missing columns, empty texts,
    unknown labels), split files or carved splits, over-long texts, data.limit and eval.max_examples: either a clear
    error, or rows kept + rows skipped or left out of a sample == rows in the files, and every sample is a seeded,
    stratified subset of its split."""
    reached: Counter[str] = Counter()

    @bounded(120)
    @given(train=tables_of_rows(20), validation=one_in(2, tables_of_rows(5), st.none()),
           test=one_in(2, tables_of_rows(5), st.none()), sort=st.booleans(), as_csv=st.booleans(),
           skip=one_in(3, st.just(False), st.just(True)),
           shares=st.tuples(st.sampled_from([0.1, 0.2, 0.5]), st.sampled_from([0.0, 0.1, 0.3])),
           labels=st.none() | st.sampled_from([["pos", "neg"], ["neg", "pos", "meh"]]), truncation=st.booleans(),
           limit=one_in(3, st.none(), st.integers(1, 50)), max_examples=one_in(3, st.none(), st.integers(1, 15)))
    def check(train: list, validation: list | None, test: list | None, sort: bool, as_csv: bool, skip: bool,
              shares: tuple, labels: list | None, truncation: bool, limit: int | None, max_examples: int | None) -> None:
        reached["tried"] += 1
        if sort:  # label-sorted, as exports often are: the first N rows would be one class
            train = sorted(train, key=lambda row: str(row.get("sentiment")))
        data: dict[str, Any] = {"train": str(write_rows(workdir, train, as_csv)), "labels": labels, "limit": limit,
                                "columns": {"text": "review", "label": "sentiment"},
                                "on_bad_rows": "skip" if skip else "error", "split": {}}
        for name, rows, share in (("validation", validation, shares[0]), ("test", test, shares[1])):
            if rows is None:
                data["split"][name] = share
            else:
                data[name] = str(write_rows(workdir, rows, as_csv))
        raw = {"model": {"name": str(MINILM_DIR)}, "task": {"max_length": 24, "truncation": truncation},
               "data": data, "eval": {"max_examples": max_examples}}
        recipe = parse_recipe(raw)
        try:
            prepared = prepare_data(recipe, build_task(recipe, tokenizer))
        except DataError as err:
            assert str(err).strip(), "an empty error message"
            return
        reached["prepared"] += 1
        report, splits = prepared.report, prepared.splits
        given_rows = sum(len(rows) for rows in (train, validation, test) if rows is not None)
        assert sum(report.rows.values()) + sum(report.skipped.values()) == given_rows
        assert all(splits[name] for name in ("train", "validation")), "an empty split went on to training"
        if not skip:
            assert all(" left out by " in reason for reason in report.skipped), report.skipped
        caps = {name: limit if name == "train" else max_examples for name in splits}
        for name, cap in caps.items():
            assert cap is None or len(splits[name]) <= cap
            if left_out(report, name):  # a sample was taken: it is full, and the split's size is reported
                assert len(splits[name]) == cap and report.sampled_from[name] > cap
        if not any(left_out(report, name) for name in splits):
            return
        reached["sampled"] += 1
        assert prepare_data(recipe, build_task(recipe, tokenizer)).splits == splits, "a sample that is not seeded"
        # the splits whole (skipping over-long rows the sample never met, which would stop an error-mode run)
        whole = parse_recipe({**raw, "data": {**data, "limit": None, "on_bad_rows": "skip"}, "eval": {}})
        full = prepare_data(whole, build_task(whole, tokenizer)).splits
        reached["stratification checked"] += truncation
        for name, features in splits.items():
            assert not as_keys(features) - as_keys(full[name]), f"the {name} sample holds rows its split lacks"
            if truncation and left_out(report, name):  # no row refused in the sample: exact stratification
                share = Counter(f["label"] for f in full[name])
                for label, count in Counter(f["label"] for f in features).items():
                    assert abs(count - len(features) * share[label] / len(full[name])) < 2, (name, label)

    check()
    TRIED["data pipeline tables"] += reached["tried"]
    substantial(reached["prepared"], reached["tried"], 0.5, "were prepared (the rest ended in a DataError)")
    substantial(reached["sampled"], reached["tried"], 0.25, "had rows left out by data.limit or eval.max_examples")
    substantial(reached["stratification checked"], reached["tried"], 0.1, "had a sample's label shares checked")


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


RESOLVED = parse_recipe(VALID).model_dump(mode="json")  # every key a recipe has, defaults filled in
CHOICES = ["linear", "cosine", "full", "lora", "bitfit", "causal_lm", "seq2seq", "skip", "error", "keep", "check", "max",
           "min", "loss", "accuracy", "gelu", "relu", "q_proj", "runs", "minilm-l6", "reviews.csv"]
override_values = (st.integers(-2, 5000) | st.floats(-1, 1e4, allow_nan=False) | st.booleans() | st.none()
                   | st.sampled_from(CHOICES) | st.text(string.ascii_letters + "._-", max_size=8)
                   | st.lists(st.integers(0, 64), max_size=3) | st.dictionaries(st.sampled_from(["patience", "r", "x"]),
                                                                           st.integers(0, 9), max_size=2))


def one_in(n: int, rare: st.SearchStrategy, usual: st.SearchStrategy) -> st.SearchStrategy:
    """``rare`` for about one draw in n, else ``usual`` (hypothesis' one_of has no weights)."""
    return st.integers(1, n).flatmap(lambda k: rare if k == 1 else usual)


def value_at(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


key_paths = st.lists(st.sampled_from(["train", "lr", "x", "r", "data"]), min_size=1, max_size=3).map(tuple)


def values_like(current: Any) -> st.SearchStrategy:
    """Values of the kind a key holds (mostly valid), so that most overrides make a recipe to check."""
    if isinstance(current, bool):
        return st.booleans()
    if isinstance(current, int):
        return st.integers(1, 64)
    if isinstance(current, float):
        return st.floats(0.01, 0.99)
    if isinstance(current, str):
        return one_in(3, st.sampled_from(CHOICES), st.just(current))
    return st.just(current)  # None, a list or a section as it is


def one_override(path: tuple) -> st.SearchStrategy:
    return st.tuples(st.just(path), one_in(6, override_values, values_like(value_at(RESOLVED, path))))


overrides_of_every_kind = one_in(10, st.tuples(key_paths, override_values),  # a key the recipe has not
                                 st.sampled_from(paths(RESOLVED)).flatmap(one_override))


def agrees(actual: Any, given: Any) -> bool:
    """Whether a validated value is what the override gave, up to pydantic's lax conversions ('3' -> 3, 1 -> 1.0,
    'yes' -> True, [1, 2] -> (1.0, 2.0)); a given mapping only has to be contained in the validated one."""
    if isinstance(given, dict):
        return isinstance(actual, dict) and all(k in actual and agrees(actual[k], v) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(actual, list | tuple) and len(actual) == len(given) and all(map(agrees, actual, given))
    if given is None or isinstance(actual, str) and isinstance(given, str):
        return actual == given
    if isinstance(actual, bool):
        words = {"true", "yes", "on", "1", "t", "y"} if actual else {"false", "no", "off", "0", "f", "n"}
        return given == actual or str(given).lower() in words
    try:
        return math.isclose(float(actual), float(given), rel_tol=1e-9) or actual == given
    except (TypeError, ValueError):
        return False


def blamed_sections(message: str) -> set[str]:
    """The top-level sections a validation error blames, from its '  - path: ...' lines."""
    found = set()
    for line in message.splitlines():
        if match := re.match(r"  - unknown key '([^']*)'|  - ([^:]+):", line):
            found.add((match.group(1) or match.group(2)).split(".")[0])
    return found


def test_recipe_from_a_valid_one_and_overrides(workdir: Path) -> None:
    """--set on a valid recipe: keys the recipe has (and a few it has not), values of every type. Each ends in a
    recipe that holds every override's value where the override put it, or in a RecipeError that blames only the
    sections the overrides touched (or the recipe as a whole). A few raw recipes are random structures."""
    reached: Counter[str] = Counter()

    @bounded(300)
    @given(raw=one_in(10, structures, st.just(VALID)), random_text=one_in(10, st.lists(st.text(max_size=20), min_size=1,
                                                                                       max_size=1), st.just([])),
           overrides=st.lists(overrides_of_every_kind, min_size=1, max_size=3))
    def check(raw: Any, overrides: list[tuple[tuple, Any]], random_text: list[str]) -> None:
        reached["tried"] += 1
        assignments = [f"{'.'.join(path)}={json.dumps(value)}" for path, value in overrides] + random_text
        try:
            recipe = parse_recipe(copy.deepcopy(raw), "fuzz.yaml", assignments)
        except RecipeError as err:
            message = str(err)
            assert "fuzz.yaml" in message or "--set '" in message, message
            if raw is VALID and "fuzz.yaml" in message and not random_text:
                reached["refused a valid recipe's overrides"] += 1
                touched = {path[0] for path, _ in overrides}
                assert blamed_sections(message) <= touched | {"(top level)"}, message
            return
        if random_text:  # a random assignment may have set any key: nothing certain to compare
            return
        reached["valid"] += 1
        expected = copy.deepcopy(raw)  # the overrides applied by hand: each value, parsed as YAML, at its path
        for path, value in overrides:
            node = expected
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = yaml.safe_load(json.dumps(value))
        resolved = recipe.model_dump(mode="json")
        for i, (path, _) in enumerate(overrides):
            if any(path[:len(later)] == later for later, _ in overrides[i + 1:]):
                continue  # a later override replaced this key or a section above it
            assert agrees(value_at(resolved, path), value_at(expected, path)), (path, value_at(resolved, path))

    check()
    TRIED["recipe random structures + --set"] += reached["tried"]
    substantial(reached["valid"], reached["tried"], 0.25, "made a valid recipe (its values were checked)")
    # The shares move with the draw, which shifts whenever a recipe gains a key (22.7% after the last shift): 20% is 60.
    # The test below checks the blame on inputs that are all refused, whatever the draw.
    substantial(reached["refused a valid recipe's overrides"], reached["tried"], 0.2,
                "were refused with the blame checked")


SCALAR_PATHS = [path for path in paths(RESOLVED) if isinstance(value_at(RESOLVED, path), bool | int | float | str)]


@bounded(150)
@given(others=st.lists(st.sampled_from(paths(RESOLVED)).flatmap(one_override), max_size=2),
       bad=st.sampled_from(SCALAR_PATHS))
def test_a_refused_override_blames_only_the_sections_the_overrides_touched(others: list[tuple[tuple, Any]],
                                                                           bad: tuple) -> None:
    """Every input here is refused, so every one reaches the blame check (the test above reaches it only for the
    share of its draw that happens to be refused): up to two overrides of any kind on keys the recipe has, then a
    mapping where a scalar belongs. The error blames no section the overrides left alone, and names the key when it
    is the only override (another invalid one may be what pydantic reports first, e.g. a task type it cannot tell)."""
    TRIED["refused overrides"] += 1
    overrides = [*others, (bad, {"x": 1})]
    with pytest.raises(RecipeError) as caught:
        parse_recipe(copy.deepcopy(VALID), "fuzz.yaml", [f"{'.'.join(path)}={json.dumps(value)}"
                                                          for path, value in overrides])
    message = str(caught.value)
    assert "fuzz.yaml" in message, message
    if not others:  # alone, the bad key is named (a tagged section's tag as "strategy: ... 'method'")
        assert bad[0] in message and str(bad[-1]) in message, message
    assert blamed_sections(message) <= {path[0] for path, _ in overrides} | {"(top level)"}, message


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


def test_zz_report_inputs_tried(request: pytest.FixtureRequest) -> None:
    """Runs last (file order): says how many inputs the fuzz pass tried and how many got past the early exits, so
    the counts are visible in CI logs; when every test of this file ran and passed, the total must be CI-sized."""
    total = sum(TRIED.values())
    print(f"\nfuzz inputs tried: {total} " + json.dumps(dict(TRIED)) + "\nreached: " + json.dumps(dict(REACHED)))
    here = [item for item in request.session.items if item.module is not None and item.module.__name__ == __name__]
    every = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    if {item.originalname for item in here} == every and request.session.testsfailed == 0:
        assert total >= 2000 * SCALE, f"only {total} fuzz inputs were tried"
