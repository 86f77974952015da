"""`validate_file`: one streaming pass over an uploaded dataset that detects its format and lists the first
problems with their line numbers.

Detection: the file's format is that of the first row whose keys announce one (see `formats.detect_format`).
Rows before it (at most `DETECT_WINDOW`) wait in a small buffer so that they are checked against it too and
errors stay in file order. A later row that announces another format is a `mixed_formats` error."""

from __future__ import annotations

from pathlib import Path

from common.datasets.checks import text_issue
from common.datasets.formats import (
    FORMATS,
    SIGNATURES,
    STAGES,
    check_object,
    check_row,
    detect_format,
    unknown_format_text,
)
from common.datasets.reader import Record, open_records
from common.datasets.records import MISSING
from common.datasets.report import ErrorCollector, Issue, ValidationReport

DETECT_WINDOW = 100
_EMPTY_ADVICE = {
    "jsonl": "upload at least one JSON object (one per line)",
    "json": "upload an array with at least one JSON object",
    "csv": "after the header line, add at least one row",
    "tsv": "after the header line, add at least one row",
    "parquet": "the Parquet file holds no rows",
    "text": "add some text",
}


def validate_file(
    path: Path, *, format: str | None = None, max_errors: int = 20, name: str | None = None
) -> ValidationReport:
    """Check every row of `path`; `format` skips detection; `name` is the uploaded file's name (its extension
    helps tell the container; default: the path's). Raises ValueError for an unknown `format` name."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    container, records = open_records(Path(path), name)
    run = _Run(format, ErrorCollector(max_errors))
    for record in records:
        run.feed(record)
    run.finish(container)
    fmt = run.fmt
    errors = run.out
    return ValidationReport(
        format=fmt,
        stages=list(STAGES[fmt]) if fmt is not None and errors.count == 0 else [],
        row_count=run.rows,
        errors=errors.errors,
        error_count=errors.count,
        container=container,
    )


class _Run:
    def __init__(self, fmt: str | None, out: ErrorCollector) -> None:
        self.fmt = fmt
        self.origin = "given as format=" if fmt else ""
        self.out = out
        self.rows = 0
        self.pending: list[Record] = []
        self.undetectable = False

    def feed(self, record: Record) -> None:
        self.rows += record.row
        if record.issue is None and record.value is not MISSING:
            problem = text_issue(record.value)  # a NUL or a lone surrogate: refused before anything quotes it
            if problem is not None:
                record.issue, record.value = problem, MISSING
        if self.fmt is None and not self.undetectable:
            self.pending.append(record)
            found = detect_format(record.value) if isinstance(record.value, dict) else None
            if found is not None:
                self.fmt, self.origin = found, f"detected from {record.where}"
                self._flush()
            elif len(self.pending) >= DETECT_WINDOW:
                self._give_up()
            return
        self._check(record)

    def finish(self, container: str | None) -> None:
        if self.pending:
            self._give_up()
        if self.rows == 0 and self.out.count == 0:
            advice = _EMPTY_ADVICE.get(container or "jsonl", _EMPTY_ADVICE["jsonl"])
            self.out.add(0, None, Issue(None, "empty_file", f"the file has no rows; {advice}"))

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for record in pending:
            self._check(record)

    def _give_up(self) -> None:
        """No row announced a format: report the first object row once, and only container problems after."""
        self.undetectable = True
        reported = False
        pending, self.pending = self.pending, []
        for record in pending:
            if not reported and isinstance(record.value, dict):
                self.out.add(
                    record.line,
                    record.where,
                    Issue(None, "unknown_format", unknown_format_text(record.value)),
                )
                reported = True
            else:
                self._check(record)

    def _check(self, record: Record) -> None:
        if record.issue is not None:
            self.out.add(record.line, record.where, record.issue)
            return
        value = record.value
        problem = check_object(value)
        if problem is not None:
            self.out.add(record.line, record.where, problem)
            return
        if self.fmt is None:
            return
        found = detect_format(value)
        if found is not None and found != self.fmt:
            self.out.add(record.line, record.where, Issue(None, "mixed_formats", self._mixed_text(found)))
            return
        for issue in check_row(self.fmt, value):
            self.out.add(record.line, record.where, issue)

    def _mixed_text(self, found: str) -> str:
        assert self.fmt is not None
        return (
            f"this row is {found} (it has {SIGNATURES[found]}) but the file is {self.fmt} ({self.origin}); "
            f"every row of a file must use one format — convert this row to {self.fmt} "
            "or upload it in a separate file"
        )
