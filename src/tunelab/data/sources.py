"""Readers for the file formats users bring: CSV, TSV, JSONL, Parquet, and ``datasets`` objects.

Every row keeps the line number it came from, so a bad row can be reported as ``reviews.csv, line 17``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class Row:
    """One example as read, with where it came from (for error messages)."""

    values: dict[str, Any]
    source: str
    line: int

    def where(self) -> str:
        return f"{self.source}, line {self.line}" if self.line else self.source


def read_file(path: str | Path) -> list[Row]:
    """Read a data file by its extension; errors name the file and the line and say what to do."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (check data.train / data.validation / data.test in the recipe)")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(sorted(FORMATS))}")
    try:
        if kind == "jsonl":
            return _read_jsonl(path)
        if kind == "parquet":
            return _read_parquet(path)
        return _read_delimited(path, "\t" if kind == "tsv" else ",")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); re-save the file as UTF-8") from None


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    csv.field_size_limit(2**31 - 1)
    rows: list[Row] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty; it needs a header line and at least one row") from None
        except csv.Error as err:
            raise DataError(f"{path}, line 1: unreadable header ({err})") from None
        if len(set(header)) != len(header):
            raise DataError(f"{path}, line 1: repeated column names in the header: {header}")
        try:
            for record in reader:
                if not record:
                    continue
                line = reader.line_num
                if len(record) != len(header):
                    raise DataError(
                        f"{path}, line {line}: {len(record)} fields where the header has {len(header)}; "
                        "quote fields that contain the delimiter"
                    )
                rows.append(Row(dict(zip(header, record)), str(path), line))
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: {err}") from None
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(value).__name__}")
            rows.append(Row(value, str(path), line_no))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq
    from pyarrow.lib import ArrowException

    try:
        table = pq.read_table(path)
    except (ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [Row(values, str(path), index + 1) for index, values in enumerate(table.to_pylist())]


def from_records(records: list[dict[str, Any]] | Any, source: str) -> list[Row]:
    """Wrap in-memory records or a ``datasets.Dataset`` as rows (line = 1-based index)."""
    return [Row(dict(values), source, index + 1) for index, values in enumerate(records)]
