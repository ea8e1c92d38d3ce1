"""Readers for the file formats users bring: CSV, TSV, JSONL, Parquet, and ``datasets`` objects.

Every row keeps the lines it came from, so a bad row can be reported as ``reviews.csv, line 17`` (or ``lines 2-5``
for a CSV row whose quoted field runs over several lines).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class Row:
    """One example as read, with where it came from (for error messages).

    ``doubt`` is what the reader found suspicious in a row that is still legal, such as a quoted CSV field that runs
    over several lines and holds the delimiter (the mark of a stray opening quote): data.multiline_fields decides.
    """

    values: dict[str, Any]
    source: str
    line: int
    last_line: int = 0  # the last line of a CSV row whose quoted field spans lines; 0 when it is ``line``
    doubt: str | None = None

    def where(self) -> str:
        if self.last_line > self.line:
            return f"{self.source}, lines {self.line}-{self.last_line}"
        return f"{self.source}, line {self.line}" if self.line else self.source


def read_file(path: str | Path) -> list[Row]:
    """Read a data file by its extension; errors name the file and the line and say what to do."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (check data.train / data.validation / data.test in the recipe)")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(sorted(FORMATS))}")
    if kind == "parquet":
        return _read_parquet(path)
    _check_encoding(path)
    try:
        if kind == "jsonl":
            return _read_jsonl(path)
        return _read_delimited(path, "\t" if kind == "tsv" else ",")
    except UnicodeDecodeError:
        raise DataError(_not_utf8(path)) from None


# UTF-32 LE starts with the UTF-16 LE mark, so it is tested first.
_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")]


def _check_encoding(path: Path) -> None:
    """Stop UTF-16/32 and binary files up front: UTF-16 text without a byte-order mark decodes as 'valid' UTF-8
    full of NUL characters, which would otherwise become column names and texts no one typed."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise DataError(f"{path}: the file is {name} encoded; re-save it as UTF-8")
    if b"\x00" in head:
        raise DataError(f"{path}: contains NUL bytes, so it is binary or UTF-16/32 text, not UTF-8; re-save it as UTF-8")


def _not_utf8(path: Path) -> str:
    """Name the first line that is not UTF-8 (the decoder's own offset is relative to a buffer, not the file)."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"{path}, line {line_no}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                        "the file may be Latin-1 or Windows-1252: re-save it as UTF-8")
    return f"{path}: not UTF-8 text; re-save it as UTF-8"


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
        last = reader.line_num
        try:
            for record in reader:
                first, last = last + 1, reader.line_num
                if not record:
                    continue
                row = Row(dict(zip(header, record)), str(path), first, last if last > first else 0)
                if len(record) != len(header):
                    raise DataError(f"{row.where()}: {len(record)} fields where the header has {len(header)}; "
                                    "quote fields that contain the delimiter" + _stray_quote_hint(row, record))
                if any("\x00" in value for value in record):
                    raise DataError(f"{row.where()}: contains a NUL character; the file is damaged or not text")
                row.doubt = _swallowed_delimiter(row, record, delimiter)
                rows.append(row)
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: {err}") from None
    return rows


def _spans_lines(value: str) -> bool:
    return "\n" in value or "\r" in value


def _swallowed_delimiter(row: Row, record: list[str], delimiter: str) -> str | None:
    """A field that runs over several lines *and* holds the delimiter reads like rows swallowed by a stray quote."""
    if not row.last_line or not any(_spans_lines(v) and delimiter in v for v in record):
        return None
    shown = {"\t": "a tab", ",": "a comma"}.get(delimiter, f"'{delimiter}'")
    return (f"a quoted field spans these lines and holds the delimiter ({shown}), as if a stray opening quote "
            "swallowed the rows after it; remove the stray quote, or set data.multiline_fields: keep if the field "
            "really spans them")


def _stray_quote_hint(row: Row, record: list[str]) -> str:
    if not row.last_line or not any(_spans_lines(v) for v in record):
        return ""
    return "; a quoted field spans these lines: is an opening quote missing its closing one?"


def _read_jsonl(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            except RecursionError:
                raise DataError(f"{where}: JSON nested too deeply to read; each line must be one flat JSON object") from None
            except ValueError as err:  # e.g. an integer of more than 4300 digits
                raise DataError(f"{where}: unreadable JSON value ({err})") from None
            if not isinstance(value, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(value).__name__} "
                                "(a .json/.jsonl file must hold one JSON object per line)")
            if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(value):
                raise DataError(f"{where}: a \\uD800-\\uDFFF escape without its pair; that is not valid Unicode text")
            rows.append(Row(value, str(path), line_no))
    return rows


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    """JSON may escape half a surrogate pair; such a string cannot be encoded, and tokenizers fail deep inside on it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return False


def _read_parquet(path: Path) -> list[Row]:
    """Read a Parquet file, verifying page checksums where the writer stored them (parquet-mr does by default,
    pyarrow with ``write_page_checksum=True``): unchecked, a flipped byte in a data page reads back as other values
    without a word. Parquet has no checksum over its footer (schema, column names); a damaged name shows up as a
    missing column."""
    import pyarrow.parquet as pq
    from pyarrow.lib import ArrowException

    try:
        table = pq.read_table(path, page_checksum_verification=True)
        records = table.to_pylist()
    except UnicodeDecodeError:
        raise DataError(f"{path}: a text column holds bytes that are not UTF-8; re-write the file with valid strings") from None
    except (ArrowException, OSError, ValueError, OverflowError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [Row(values, str(path), index + 1) for index, values in enumerate(records)]


def from_records(records: list[dict[str, Any]] | Any, source: str) -> list[Row]:
    """Wrap in-memory records or a ``datasets.Dataset`` as rows (line = 1-based index)."""
    return [Row(dict(values), source, index + 1) for index, values in enumerate(records)]
