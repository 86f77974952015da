"""Plain text (.txt) for pre-training: each document becomes a row {"text": ...} of the `text` format.

Documents: a file that has a blank line between two lines of text is split at blank lines (one document per
paragraph, its line breaks kept); a file without any blank line has one document per line. Deciding takes one
extra streaming pass. Line endings become "\\n"; a UTF-8 BOM is dropped; whitespace-only lines are blank. A
row's `line` is the line its document starts on. A document may be as long as any row (`max_row_bytes`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from common.datasets import records
from common.datasets.records import BOM, Record, file_issue, open_dataset, too_large_issue, utf8_issue
from common.datasets.report import Issue

CHUNK = 1024 * 1024


def iter_text(path: Path) -> Iterator[Record]:
    try:
        with open_dataset(path) as f:
            by_paragraph = has_paragraphs(f)
        with open_dataset(path) as f:
            yield from (_paragraphs(f) if by_paragraph else _lines(f))
    except (OSError, EOFError, zlib.error):
        yield file_issue("invalid_gzip", "the gzip data is corrupt or truncated; compress the file again")


def has_paragraphs(f: IO[bytes]) -> bool:
    """True when a blank line stands between two lines of text."""
    seen_text = blank_after_text = False
    line_has_text = False
    while piece := f.readline(CHUNK):
        line_has_text = line_has_text or not piece.isspace()
        if not piece.endswith(b"\n"):
            continue  # the rest of a long line follows
        if not line_has_text:
            blank_after_text = blank_after_text or seen_text
        elif blank_after_text:
            return True
        else:
            seen_text = True
        line_has_text = False
    return False


def _physical_lines(f: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, its bytes without the line ending), or None for a line over the row limit."""
    n = 0
    limit = records.max_row_bytes()
    while raw := f.readline(limit + 2):  # the line, and its \r\n when it is just under the limit
        n += 1
        if len(raw.rstrip(b"\r\n")) > limit:
            while not raw.endswith(b"\n") and (raw := f.readline(CHUNK)):
                pass
            yield n, None
            continue
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        yield n, raw.rstrip(b"\r\n")


def _decode(raw: bytes) -> tuple[str, Issue | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return "", utf8_issue(raw, exc)


def _lines(f: IO[bytes]) -> Iterator[Record]:
    for n, raw in _physical_lines(f):
        if raw is None:
            yield Record(n, f"line {n}", issue=_too_long("the line"))
            continue
        if not raw.strip():
            continue
        text, issue = _decode(raw)
        yield Record(n, f"line {n}", value={"text": text}) if issue is None else Record(n, f"line {n}", issue=issue)


def _paragraphs(f: IO[bytes]) -> Iterator[Record]:
    start = 0
    parts: list[str] = []
    size = 0
    problem: tuple[int, Issue] | None = None  # the first bad line of the document, and why
    limit = records.max_row_bytes()
    for n, raw in _physical_lines(f):
        if raw is not None and not raw.strip():
            if start:
                yield _document(start, parts, problem)
            start, parts, size, problem = 0, [], 0, None
            continue
        if not start:
            start = n
        if problem is not None:
            continue  # the document is already an error; skip the rest of it
        if raw is None or size + len(raw) > limit:
            problem, parts = (n, _too_long(f"the paragraph starting on line {start}")), []
            continue
        text, issue = _decode(raw)
        if issue is not None:
            problem, parts = (n, issue), []
            continue
        parts.append(text)
        size += len(raw) + 1
    if start:
        yield _document(start, parts, problem)


def _document(start: int, parts: list[str], problem: tuple[int, Issue] | None) -> Record:
    if problem is not None:
        line, issue = problem
        return Record(line, f"line {line}", issue=issue)
    return Record(start, f"line {start}", value={"text": "\n".join(parts)})


def _too_long(what: str) -> Issue:
    return too_large_issue(what, "(separate documents with a blank line)")
