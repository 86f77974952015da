"""What every container reader yields, and the helpers they share: `Record` (one row or a file-level problem),
opening a plain or gzip file, and the texts of the problems every container can have (a line too long, bytes
that are not UTF-8). The readers (reader.py, tables.py, plaintext.py) import this module, and it imports none
of them."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from common.datasets.report import Issue
from common.settings import get_settings

ROW_TOO_LARGE = "row_too_large"
ROW_LIMIT_SETTING = "TUNEQUEUE_MAX_ROW_BYTES"
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
ACCEPTED = "JSON Lines, a JSON array, CSV, TSV, Parquet or plain text (.txt), optionally gzip-compressed"
MISSING: Any = object()  # the `value` of a record that has none


@dataclass(slots=True)
class Record:
    """One row (`row=True`) or a file-level problem (`row=False`). A row has a `value` or an `issue`."""

    line: int
    where: str | None
    value: Any = MISSING
    issue: Issue | None = None
    row: bool = True


@contextmanager
def open_dataset(path: Path) -> Iterator[IO[bytes]]:
    """Open `path` for binary reading, decompressing gzip (recognised by its magic bytes, not its name)."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(IO[bytes], gz)
        else:
            yield raw


def file_issue(code: str, text: str, line: int = 0) -> Record:
    return Record(line=line, where=None, issue=Issue(None, code, text), row=False)


def max_row_bytes() -> int:
    """The largest row a file may hold, in bytes (`TUNEQUEUE_MAX_ROW_BYTES`, read on every call so that a
    test or an operator's change applies to the next file)."""
    return get_settings().max_row_bytes


def size_text(n: int) -> str:
    """1 MiB, 512 KiB, 1,000 bytes."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n:,} bytes"


def too_long_text(what: str = "the line", advice: str = "(each line must be one JSON object)") -> str:
    return (
        f"{what} is longer than {size_text(max_row_bytes())}, the largest row this server accepts "
        f"({ROW_LIMIT_SETTING}); split the example into shorter ones or shorten it {advice}"
    ).rstrip()


def too_large_issue(what: str = "the line", advice: str = "(each line must be one JSON object)") -> Issue:
    return Issue(None, ROW_TOO_LARGE, too_long_text(what, advice))


def value_bytes(value: Any, limit: int) -> int:
    """The size of a parsed row as a JSON line, in UTF-8 bytes; exact once it may be over `limit` (cheap
    otherwise: every string counted at 4 bytes a character, its upper bound)."""
    estimate = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            estimate += 4 * len(item) + 2
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
            estimate += 2 + 2 * len(item)
        elif isinstance(item, list | tuple):
            stack.extend(item)
            estimate += 2 + len(item)
        else:
            estimate += 24  # a number, a boolean, null, a date
        if estimate > limit:
            return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    return estimate


def utf8_issue(raw: bytes, exc: UnicodeDecodeError) -> Issue:
    bad = raw[exc.start : exc.start + 1].hex()
    return Issue(
        None,
        "invalid_utf8",
        f"byte 0x{bad} at position {exc.start + 1} of the line is not valid UTF-8; save the file as UTF-8 "
        "(it may be Latin-1 or Windows-1252 encoded)",
    )
