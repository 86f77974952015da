"""Tabular containers: CSV/TSV (a header row, then one row per example) and Parquet. A row becomes a dict of
column → value, so format detection and the row checks are the same as for JSON.

CSV/TSV
- The first non-blank line is the header; column names are trimmed and must be unique and non-empty.
- Quoting follows RFC 4180 (what Python's csv, pandas and spreadsheets write) for both CSV and TSV: a field
  holding the delimiter, a quote or a line break is wrapped in double quotes, with inner quotes doubled. A row's
  `line` is the physical line it starts on (a quoted field may span lines).
- Every cell is a string. Two columns are converted: `label` (KTO) from true/false/1/0/yes/no, and `history`
  (Alpaca) from a JSON list of [question, answer] pairs (an empty cell is no history). Message lists
  (`messages`, `conversations`, conversational preference rows) need JSON or Parquet.

Parquet
- Bounded before a page is decompressed: the row groups' uncompressed size (from the footer) must fit in
  `records.expansion_budget` of the file's size, else the file is `file_too_large` and no row is read. While
  reading, the Arrow bytes of the batches read so far are held to the same budget (a footer can understate them,
  and a dictionary-encoded column expands past it), and a batch holds at most `PARQUET_BATCH_BYTES` of rows at the
  row limit, so one batch of maximal rows stays small.
- Read in batches of at most `PARQUET_BATCH_ROWS` rows; a row's `line` is its index + 1 ("row 12"). Nested columns
  (a `messages` list of structs) work as in JSON; a null field inside a struct counts as absent (Parquet gives
  every struct every field of the schema).
"""

from __future__ import annotations

import contextlib
import csv
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from common.datasets import records
from common.datasets.formats import SIGNATURE_KEYS
from common.datasets.records import (
    ACCEPTED,
    BOM,
    Record,
    expansion_budget,
    expansion_text,
    file_issue,
    too_large_issue,
    utf8_issue,
    value_bytes,
)
from common.datasets.report import Issue

PARQUET_BATCH_ROWS = 512
PARQUET_BATCH_BYTES = 32 * 1024 * 1024
HEADER_WORDS = frozenset(SIGNATURE_KEYS) | {"input", "system", "history"}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}

# No field limit of csv's own: `_Lines` stops a record (a runaway quote too) at the row limit.
csv.field_size_limit(2**31 - 1)


def sniff_header(line: str) -> str | None:
    """'tsv' or 'csv' when `line` is a header naming at least one dataset column; else None."""
    delimiter = "\t" if "\t" in line else ","
    try:
        names = {name.strip().lower() for name in next(csv.reader([line], delimiter=delimiter), [])}
    except csv.Error:  # e.g. a bare carriage return (old Mac line endings): not a header we can read
        return None
    if not names & HEADER_WORDS:
        return None
    return "tsv" if delimiter == "\t" else "csv"


class _TooLong(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Lines:
    """Decoded physical lines for csv.reader. Counts them, and keeps why a line was not UTF-8 (the line is
    still handed on, with replacement characters, so that quoting stays in step)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.count = 0
        self.bad: dict[int, Issue] = {}
        self.limit = records.max_row_bytes()
        self.record_bytes = 0  # of the record being read, without its last line ending
        self.record_start = 1

    def start_record(self) -> None:
        self.record_bytes, self.record_start = 0, self.count + 1

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.f.readline(self.limit + 2)  # a line just under the limit, and its \r\n
        if not raw:
            raise StopIteration
        self.count += 1
        self.record_bytes += len(raw)
        if self.record_bytes - (len(raw) - len(raw.rstrip(b"\r\n"))) > self.limit:
            raise _TooLong(self.record_start)
        if self.count == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.bad.setdefault(self.count, utf8_issue(raw, exc))
            return raw.decode("utf-8", "replace")

    def first_bad(self, start: int) -> Issue | None:
        """The first decoding problem in lines start..count (the record just read), forgetting them."""
        found = next((self.bad[n] for n in sorted(self.bad) if n >= start), None)
        self.bad.clear()
        return found


def iter_csv(f: IO[bytes], delimiter: str) -> Iterator[Record]:
    what = "TSV" if delimiter == "\t" else "CSV"
    lines = _Lines(f)
    rows = csv.reader(lines, delimiter=delimiter, strict=True)
    header: list[str] | None = None
    header_line = 0
    while True:
        start = lines.count + 1
        lines.start_record()
        try:
            fields = next(rows)
        except StopIteration:
            return
        except _TooLong as exc:
            issue = too_large_issue(f"the row starting on line {exc.line}", "")
            text = (f"{issue.text}; if a quote (\") is never closed, close it. The rest of the file is not read")
            yield Record(exc.line, f"line {exc.line}", issue=issue._replace(text=text))
            return
        except csv.Error as exc:
            issue = Issue(None, "invalid_csv", _csv_error_text(str(exc), what, start, lines.count))
            yield Record(start, f"line {start}", issue=issue, row=header is not None)
            if header is None:
                return
            continue
        except (OSError, EOFError, zlib.error):
            yield file_issue(
                "invalid_gzip",
                f"the gzip data is corrupt or truncated after line {lines.count}; compress the file again",
                lines.count + 1,
            )
            return
        if not any(field.strip() for field in fields):
            continue  # a blank line, or a row of empty cells (spreadsheets pad with those)
        bad = lines.first_bad(start)
        if header is None:
            problem = bad or _header_problem(fields, what)
            if problem is not None:
                yield Record(start, f"line {start} (the header)", issue=problem, row=False)
                return
            header, header_line = [name.strip() for name in fields], start
            continue
        where = f"line {start}"
        if bad is not None:
            yield Record(start, where, issue=bad)
        elif len(fields) != len(header):
            text = (
                f"the row has {len(fields)} fields but the header (line {header_line}) has {len(header)} "
                f"columns; wrap a field that contains {_delimiter_name(delimiter)}, a quote or a line break in "
                'double quotes (and double the quotes inside it: "")'
            )
            yield Record(start, where, issue=Issue(None, "invalid_csv", text))
        else:
            yield Record(start, where, value=_row(header, fields))


def _header_problem(fields: list[str], what: str) -> Issue | None:
    names = [name.strip() for name in fields]
    if "" in names:
        text = (
            f"column {names.index('') + 1} of the {what} header has no name; the first line must name every "
            "column, e.g. instruction,input,output or text"
        )
        return Issue(None, "invalid_csv", text)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return Issue(None, "invalid_csv", f"the {what} header names the column '{name}' twice; rename one")
        seen.add(name)
    return None


def _row(header: list[str], fields: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(header, fields, strict=True))
    label = row.get("label")
    if isinstance(label, str):
        low = label.strip().lower()
        row["label"] = True if low in _TRUE else False if low in _FALSE else label
    history = row.get("history")
    if isinstance(history, str):
        if not history.strip():
            del row["history"]
        elif history.lstrip().startswith("["):
            with contextlib.suppress(ValueError):  # else left a string: the check says it must be a list of pairs
                row["history"] = json.loads(history)
    return row


def _csv_error_text(message: str, what: str, start: int, end: int) -> str:
    if "unexpected end of data" in message:
        return (
            f"the quoted field starting on line {start} is never closed (the file ends inside it); add the "
            'closing quote, or double the quotes inside a quoted field ("")'
        )
    message = message.replace("'\t'", "a tab")
    span = f" (lines {start}-{end})" if end > start else ""
    return (
        f"not valid {what}{span}: {message}; a quoted field must end right after its closing quote, and quotes "
        'inside a quoted field are doubled ("")'
    )


def _delimiter_name(delimiter: str) -> str:
    return "a tab" if delimiter == "\t" else "a comma"


def iter_parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with `datasets`
        yield file_issue(
            "unsupported_container",
            "this server cannot read Parquet (pyarrow is missing); "
            f"upload {ACCEPTED.replace('Parquet or ', '')}",
        )
        return
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        yield file_issue(
            "invalid_parquet",
            f"the Parquet file cannot be read ({exc}); write it again, "
            "e.g. with pandas DataFrame.to_parquet or datasets Dataset.to_parquet",
        )
        return
    n = 0
    limit = records.max_row_bytes()
    size = path.stat().st_size
    budget = expansion_budget(size)
    declared = sum(parquet.metadata.row_group(i).total_byte_size for i in range(parquet.metadata.num_row_groups))
    if declared > budget:
        yield file_issue("file_too_large", expansion_text("the Parquet file", size, budget))
        return
    expanded = 0
    batch_rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES // limit))
    batches = parquet.iter_batches(batch_size=batch_rows)
    while True:
        try:
            batch = next(batches, None)
            expanded += batch.nbytes if batch is not None else 0
            if expanded > budget:
                yield file_issue("file_too_large", f"{expansion_text('the Parquet file', size, budget)}. Rows 1-{n} "
                                 "were checked; the rest were not read", n + 1)
                return
            values = batch.to_pylist() if batch is not None else None
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield file_issue(
                "invalid_parquet",
                f"rows after row {n} of the Parquet file cannot be read ({exc}); write the file again",
                n + 1,
            )
            return
        if values is None:
            return
        for value in values:
            n += 1
            row = _drop_nulls(value)
            if value_bytes(row, limit) > limit:
                yield Record(n, f"row {n}", issue=too_large_issue("the row (as JSON)", ""))
            else:
                yield Record(n, f"row {n}", value=row)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
