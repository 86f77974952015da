"""What every container reader yields, and the helpers they share: `Record` (one row or a file-level problem),
opening a plain or gzip file, and the texts of the problems every container can have (a line too long, bytes
that are not UTF-8). The readers (reader.py, tables.py, plaintext.py) import this module, and it imports none
of them."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from common.datasets.report import Issue

MAX_LINE_BYTES = 32 * 1024 * 1024  # read as `records.MAX_LINE_BYTES`, so that a test can lower it
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


def too_long_text(what: str = "the line", advice: str = "(each line must be one JSON object)") -> str:
    return (
        f"{what} is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; split the example or shorten it {advice}"
    ).rstrip()


def utf8_issue(raw: bytes, exc: UnicodeDecodeError) -> Issue:
    bad = raw[exc.start : exc.start + 1].hex()
    return Issue(
        None,
        "invalid_utf8",
        f"byte 0x{bad} at position {exc.start + 1} of the line is not valid UTF-8; save the file as UTF-8 "
        "(it may be Latin-1 or Windows-1252 encoded)",
    )
