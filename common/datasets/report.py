"""What validation hands back: a `RowError` per problem a user can fix, gathered into a `ValidationReport`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple


@dataclass
class RowError:
    """One problem a user can act on.

    `line` is the 1-based physical line of a JSON Lines file. For a JSON array it is the row's index + 1, and
    the message says so ("row 3 (line 12): ..."). File-level problems (an empty file, an unsupported
    container) use 0.
    """

    line: int
    field: str | None
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    format: str | None
    stages: list[str]
    row_count: int
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    container: str | None = None  # jsonl, json, csv, tsv, parquet or text; None when unreadable

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "format": self.format,
            "container": self.container,
            "stages": list(self.stages),
            "row_count": self.row_count,
            "error_count": self.error_count,
            "errors": [e.to_dict() for e in self.errors],
        }


class Issue(NamedTuple):
    """A problem found in one row, before we know where the row sits in the file."""

    field: str | None
    code: str
    text: str


class ErrorCollector:
    """Counts every error but keeps only the first `max_errors` (rows arrive in file order)."""

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max(0, max_errors)
        self.errors: list[RowError] = []
        self.count = 0

    def add(self, line: int, where: str | None, issue: Issue) -> None:
        self.count += 1
        if len(self.errors) < self.max_errors:
            message = f"{where}: {issue.text}" if where else issue.text
            field = _printable(issue.field) if issue.field is not None else None
            self.errors.append(RowError(line=line, field=field, code=issue.code, message=_printable(message)))


_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _printable(text: str) -> str:
    """A message or field quoting a row's text must not carry a NUL or a lone surrogate: the errors are stored in
    Postgres (jsonb), which refuses both. They are written as \\u escapes."""
    return _BAD_CHARACTER.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
