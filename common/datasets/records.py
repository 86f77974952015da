"""What every container reader yields, and the helpers they share: `Record` (one row or a file-level problem),
opening a plain or gzip file, and the texts of the problems every container can have (a line too long, bytes
that are not UTF-8), and the bound on what a compressed file may expand to. The readers (reader.py, tables.py,
plaintext.py) import this module, and it imports none of them."""

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

# What a compressed upload (gzip, or a Parquet file's compressed pages) may expand to while it is read: at most
# MAX_DECOMPRESSED_BYTES, and at most MAX_COMPRESSION_RATIO times the file's own size once past
# RATIO_FREE_BYTES. Text datasets compress 3-20:1; before these bounds a 204 KB gzip holding a 200 MiB JSON array
# was accepted and grew the API by 400 MB. Over either: `file_too_large` (docs/datasets.md), nothing expanded further.
MAX_DECOMPRESSED_BYTES = 2 * 1024**3
MAX_COMPRESSION_RATIO = 100
RATIO_FREE_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Record:
    """One row (`row=True`) or a file-level problem (`row=False`). A row has a `value` or an `issue`."""

    line: int
    where: str | None
    value: Any = MISSING
    issue: Issue | None = None
    row: bool = True


class ExpandsTooMuch(Exception):
    """A compressed file expanded past `expansion_budget`; `open_records` turns it into a `file_too_large`."""

    def __init__(self, what: str, size: int, budget: int) -> None:
        super().__init__(expansion_text(what, size, budget))


def expansion_budget(compressed_size: int) -> int:
    """The most bytes a file of `compressed_size` bytes may expand to (see MAX_DECOMPRESSED_BYTES)."""
    return min(MAX_DECOMPRESSED_BYTES, max(RATIO_FREE_BYTES, MAX_COMPRESSION_RATIO * compressed_size))


def expansion_text(what: str, size: int, budget: int) -> str:
    return (
        f"{what} expands to more than {size_text(budget)} ({size_text(size)} compressed); this server reads at most "
        f"{MAX_COMPRESSION_RATIO} times a compressed file's size, and never more than "
        f"{size_text(MAX_DECOMPRESSED_BYTES)}, decompressed: upload it uncompressed, or split it into smaller files"
    )


class BoundedGzipFile(gzip.GzipFile):
    """A gzip reader that refuses to hand out more than `budget` decompressed bytes: a read that would pass it
    decompresses at most one byte more, then raises ExpandsTooMuch (so `read(n)` of a JSON array cannot expand
    a bomb to n bytes first)."""

    def __init__(self, raw: IO[bytes], compressed_size: int) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self.compressed_size = compressed_size
        self.budget = expansion_budget(compressed_size)
        self.handed_out = 0

    def _count(self, data: bytes) -> bytes:
        self.handed_out += len(data)
        if self.handed_out > self.budget:
            raise ExpandsTooMuch("the gzip file", self.compressed_size, self.budget)
        return data

    def _capped(self, size: int | None) -> int:
        left = self.budget - self.handed_out + 1
        return left if size is None or size < 0 or size > left else size

    def read(self, size: int | None = -1) -> bytes:
        return self._count(super().read(self._capped(size)))

    def read1(self, size: int = -1) -> bytes:
        return self._count(super().read1(self._capped(size)))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(super().readline(self._capped(size)))


@contextmanager
def open_dataset(path: Path) -> Iterator[IO[bytes]]:
    """Open `path` for binary reading, decompressing gzip (recognised by its magic bytes, not its name) within
    `expansion_budget` of the file's size."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == GZIP_MAGIC:
            with BoundedGzipFile(raw, Path(path).stat().st_size) as gz:
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
