"""Containers and rows: open a plain or gzip file, tell which container it is (JSON Lines, a JSON array, CSV,
TSV, Parquet, plain text), and yield one `Record` per row with its line number. JSON Lines, CSV/TSV, text and
Parquet are streamed (memory stays flat for any file size); a JSON array has to be read whole, so it is limited
to `MAX_JSON_ARRAY_BYTES`.

Which container (`open_records`), in order:
1. magic bytes: Parquet (PAR1), gzip (decompressed, then the rest applies to what is inside), refused archives;
2. content: a first non-blank line that is a JSON object is JSON Lines, whatever the name; a file starting with
   `[` is a JSON array unless its name says CSV, TSV or text;
3. the file name's extension (`.gz` removed): .jsonl/.ndjson/.json, .csv, .tsv/.tab, .txt/.text, .parquet;
4. no known extension: a first line that is a CSV/TSV header naming a dataset column (instruction, text, ...) is
   CSV/TSV; anything else is read as JSON Lines (and its first error says how to name other containers).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from common.datasets import records
from common.datasets.plaintext import iter_text
from common.datasets.records import (
    ACCEPTED,
    BOM,
    GZIP_MAGIC,
    MISSING,
    ExpandsTooMuch,
    Record,
    file_issue,
    open_dataset,
    too_large_issue,
    utf8_issue,
)
from common.datasets.report import Issue
from common.datasets.tables import iter_csv, iter_parquet, sniff_header

MAX_JSON_ARRAY_BYTES = 256 * 1024 * 1024

PARQUET_MAGIC = b"PAR1"
UNSUPPORTED_MAGIC = {
    b"PK\x03\x04": "a zip archive",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
}
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
CONTAINERS = ("jsonl", "json", "csv", "tsv", "parquet", "text")
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
    ".txt": "text", ".text": "text", ".parquet": "parquet",
}  # fmt: skip
_WS = re.compile(r"[ \t\n\r]*")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; use null or a number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def iter_records(path: Path, name: str | None = None) -> Iterator[Record]:
    """Every non-blank row of the file, in order: its parsed value, or why it could not be parsed. `name` is
    the uploaded file's name (default: the path's), whose extension helps tell the container."""
    yield from open_records(path, name)[1]


def container_of(name: str) -> tuple[str | None, bool]:
    """The container a file name's extension names (None: no known one), and whether it ends in .gz."""
    low = name.lower()
    gz = low.endswith(".gz")
    suffix = Path(low[:-3] if gz else low).suffix
    return EXTENSIONS.get(suffix), gz


def open_records(path: Path, name: str | None = None) -> tuple[str | None, Iterator[Record]]:
    """(the container, its records). The container is decided here, from the first bytes and the name; the
    records are read lazily. The container is None when the file cannot be read at all. A compressed file that
    expands past `records.expansion_budget` ends its records with a `file_too_large` problem."""
    try:
        container, rows = _open_records(Path(path), name)
    except ExpandsTooMuch as exc:  # the first line alone passed the budget (a gzip of blank lines)
        return None, iter([file_issue("file_too_large", str(exc))])
    return container, _until_too_expanded(rows)


def _until_too_expanded(rows: Iterator[Record]) -> Iterator[Record]:
    try:
        yield from rows
    except ExpandsTooMuch as exc:
        yield file_issue("file_too_large", f"{exc}. The rows before were checked; the rest were not read")


def _open_records(path: Path, name: str | None) -> tuple[str | None, Iterator[Record]]:
    named, _ = container_of(name or path.name)
    with open(path, "rb") as raw:
        head = raw.read(8)
    if head.startswith(PARQUET_MAGIC):
        return "parquet", iter_parquet(path)
    for magic, what in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            return None, iter([file_issue("unsupported_container", f"the file is {what}; upload {ACCEPTED}")])
    if head.startswith(UTF16_BOMS):
        text = "the file is UTF-16 encoded; save it as UTF-8 and upload it again"
        return None, iter([Record(1, "line 1", issue=Issue(None, "invalid_utf8", text), row=False)])
    try:
        first = _first_line(path)
    except (OSError, EOFError, zlib.error):
        text = "the gzip data is corrupt or truncated; compress the file again"
        return None, iter([file_issue("invalid_gzip", text)])
    if first.startswith(PARQUET_MAGIC) or named == "parquet":
        what = "gzip-compressed Parquet" if head.startswith(GZIP_MAGIC) else "named .parquet but is not Parquet"
        text = f"the file is {what}; upload the .parquet file itself (Parquet is compressed already) or {ACCEPTED}"
        return None, iter([file_issue("unsupported_container", text)])
    container = _sniff(first, named)
    if container in ("csv", "tsv"):
        return container, _with_open(path, lambda f: iter_csv(f, "\t" if container == "tsv" else ","))
    if container == "text":
        return container, iter_text(path)
    if container == "json":
        return container, _with_open(path, _iter_array)
    jsonl = _with_open(path, _iter_jsonl)
    return "jsonl", jsonl if named is not None else _hint_other_containers(jsonl)


def _with_open(path: Path, read: Callable[[IO[bytes]], Iterator[Record]]) -> Iterator[Record]:
    with open_dataset(path) as f:
        yield from read(f)


def _sniff(first: bytes, named: str | None) -> str:
    """The container of a file whose first non-blank line is `first` and whose name says `named`."""
    if first.startswith(b"{") and isinstance(parse_json_line(first.decode("utf-8", "replace"))[0], dict):
        return "jsonl"
    if named in ("csv", "tsv", "text"):
        return named
    if first.startswith(b"["):
        return "json"
    if named is not None:  # .json / .jsonl that does not start with "[": JSON Lines, its errors say why
        return "jsonl"
    return sniff_header(first.decode("utf-8", "replace")) or "jsonl"


def _hint_other_containers(rows: Iterator[Record]) -> Iterator[Record]:
    """A nameless file read as JSON Lines by default: its first JSON error also says how to name the others."""
    hinted = False
    for record in rows:
        if not hinted and record.issue is not None and record.issue.code == "invalid_json":
            hinted = True
            text = (
                f"{record.issue.text}. If this is CSV, TSV or plain text, give it a .csv, .tsv or .txt name "
                "(or a header row naming its columns)"
            )
            record.issue = record.issue._replace(text=text)
        yield record


def _first_line(path: Path) -> bytes:
    """The first line that is not blank (without a BOM), at most 64 KiB of it; b"" for an empty file."""
    with open_dataset(path) as f:
        chunk = f.read(64 * 1024)
        if chunk.startswith(BOM):
            chunk = chunk[len(BOM) :]
        while chunk:
            stripped = chunk.lstrip()
            if stripped:
                line = stripped.split(b"\n", 1)[0]
                if b"\n" not in stripped and len(stripped) < 64 * 1024:
                    line += f.readline(64 * 1024 - len(stripped))
                return line.rstrip(b"\r\n")
            chunk = f.read(64 * 1024)
    return b""


def _iter_jsonl(f: IO[bytes]) -> Iterator[Record]:
    n = 0
    limit = records.max_row_bytes()
    while True:
        try:
            raw = f.readline(limit + 2)  # the row, and its line ending (\r\n) when it is just under the limit
        except (OSError, EOFError, zlib.error):
            yield file_issue(
                "invalid_gzip",
                f"the gzip data is corrupt or truncated after line {n}; compress the file again",
                n + 1,
            )
            return
        if not raw:
            return
        n += 1
        if len(raw.rstrip(b"\r\n")) > limit:
            if not raw.endswith(b"\n"):
                _skip_rest_of_line(f)
            yield Record(n, f"line {n}", issue=too_large_issue())
            continue
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if not raw or raw.isspace():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Record(n, f"line {n}", issue=utf8_issue(raw, exc))
            continue
        value, issue = parse_json_line(text)
        yield Record(n, f"line {n}", value=value, issue=issue)


def _skip_rest_of_line(f: IO[bytes]) -> None:
    while True:
        chunk = f.readline(1024 * 1024)
        if not chunk or chunk.endswith(b"\n"):
            return


def parse_json_line(text: str) -> tuple[Any, Issue | None]:
    """Parse one line of JSON, explaining a failure the way a person would fix it."""
    try:
        return _DECODER.decode(text), None
    except json.JSONDecodeError as exc:
        return MISSING, Issue(None, "invalid_json", _json_error_text(exc))
    except ValueError as exc:  # NaN / Infinity, rejected by _reject_constant
        return MISSING, Issue(None, "invalid_json", str(exc))
    except RecursionError:
        return MISSING, Issue(None, "invalid_json", "the JSON is nested too deeply to read")


def _json_error_text(exc: json.JSONDecodeError, *, with_line: bool = False) -> str:
    where = f"line {exc.lineno}, column {exc.colno}" if with_line else f"column {exc.colno}"
    text = f"not valid JSON: {exc.msg} at {where}"
    hint = _json_hint(exc.doc, exc.pos)
    return f"{text}; {hint}" if hint else text


def _json_hint(doc: str, pos: int) -> str | None:
    before = doc[max(0, pos - 200) : pos].rstrip()
    after = doc[pos : pos + 200].lstrip()
    if (before.endswith(",") and after[:1] in ("}", "]")) or (
        after.startswith(",") and after[1:].lstrip()[:1] in ("}", "]")
    ):
        return "remove the trailing comma before the closing bracket (JSON does not allow one)"
    if after.startswith("'"):
        return "use double quotes for keys and strings (this looks like a Python dict, not JSON)"
    if not after:
        if before in ("{", "["):
            return "the object continues on the next line; JSON Lines needs each row on a single line"
        return "the line ends before the JSON is complete; each row must be one whole JSON object on one line"
    return None


def _iter_array(f: IO[bytes]) -> Iterator[Record]:
    try:
        data = f.read(MAX_JSON_ARRAY_BYTES + 1)
    except (OSError, EOFError, zlib.error):
        yield file_issue("invalid_gzip", "the gzip data is corrupt or truncated; compress the file again")
        return
    if len(data) > MAX_JSON_ARRAY_BYTES:
        yield file_issue(
            "file_too_large",
            f"a JSON array is read whole and may be at most {MAX_JSON_ARRAY_BYTES // (1024 * 1024)} MiB; "
            "convert it to JSON Lines (one object per line), e.g. jq -c '.[]' data.json > data.jsonl",
        )
        return
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        issue = utf8_issue(data, exc)
        yield file_issue(issue.code, f"line {line} of the JSON array: {issue.text}", line)
        return
    del data
    yield from _array_rows(text)


def _too_large(text: str, begin: int, end: int, limit: int) -> bool:
    """Whether text[begin:end] is over `limit` UTF-8 bytes (a character is 1 to 4 bytes)."""
    chars = end - begin
    return chars > limit or (4 * chars > limit and len(text[begin:end].encode("utf-8", "surrogatepass")) > limit)


def _array_rows(text: str) -> Iterator[Record]:
    limit = records.max_row_bytes()
    idx = _skip_ws(text, 0) + 1  # just past the "["
    line, counted = 1, 0
    n = 0
    idx = _skip_ws(text, idx)
    if text.startswith("]", idx):
        yield from _array_tail(text, idx + 1)
        return
    while True:
        n += 1
        line += text.count("\n", counted, idx)
        counted = idx
        where = f"row {n} (line {line})"
        begin = idx
        try:
            value, idx = _DECODER.raw_decode(text, idx)
        except json.JSONDecodeError as exc:
            yield Record(n, where, issue=Issue(None, "invalid_json", _array_error_text(exc)))
            return
        except ValueError as exc:
            yield Record(n, where, issue=Issue(None, "invalid_json", f"{exc}; the rest of the array cannot be read"))
            return
        except RecursionError:
            yield Record(n, where, issue=Issue(None, "invalid_json", "the JSON is nested too deeply to read"))
            return
        if _too_large(text, begin, idx, limit):
            yield Record(n, where, issue=too_large_issue("the row", "(each element of the array is one row)"))
        else:
            yield Record(n, where, value=value)
        del value
        idx = _skip_ws(text, idx)
        sep = text[idx : idx + 1]
        if sep == "]":
            yield from _array_tail(text, idx + 1)
            return
        if sep != ",":
            yield Record(n, where, issue=Issue(None, "invalid_json", _array_error_text(_error_at(text, idx, sep))))
            return
        idx = _skip_ws(text, idx + 1)
        if text.startswith("]", idx):
            trailing = json.JSONDecodeError("Expecting value", text, idx)
            yield Record(n, where, issue=Issue(None, "invalid_json", _array_error_text(trailing)), row=False)
            return


def _skip_ws(text: str, idx: int) -> int:
    match = _WS.match(text, idx)
    return match.end() if match else idx


def _error_at(text: str, idx: int, sep: str) -> json.JSONDecodeError:
    msg = "Expecting ',' delimiter" if sep else "Expecting ',' or ']' (the array is not closed)"
    return json.JSONDecodeError(msg, text, idx)


def _array_error_text(exc: json.JSONDecodeError) -> str:
    return f"{_json_error_text(exc, with_line=True)}; the rest of the array cannot be read"


def _array_tail(text: str, idx: int) -> Iterator[Record]:
    end = _skip_ws(text, idx)
    if end < len(text):
        line = text.count("\n", 0, end) + 1
        yield file_issue(
            "invalid_json",
            f"line {line}: there is more data after the JSON array closes; upload one array, or JSON Lines "
            "with one object per line",
            line,
        )
    return
    yield  # pragma: no cover - makes this a generator
