"""How the user commands print: rich tables and text for people on stdout, `--json` for scripts (the API's
objects as they came), errors as one line on stderr."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WIDE = 160  # when stdout is not a terminal (a pipe, a file), so that ids are never cut


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    # Not a terminal: lines are never wrapped (a script reads them whole).
    return Console(stderr=stderr, width=_WIDE if wide else None, highlight=False, soft_wrap=wide)


out = _console()
err = _console(stderr=True)


def printable(text: str) -> str:
    """`text` without control characters but line breaks and tabs: what a model generates or a dataset holds
    must not move the cursor, recolour or retitle the user's terminal (an ESC sequence)."""
    return _CONTROL.sub("", text)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_json_line(value: Any) -> None:
    """One compact JSON document per line: for streams a script reads as they come (`jobs events --follow`)."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    err.print(f"error: {message}", markup=False, style="red" if err.is_terminal else None, soft_wrap=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> Table:
    grid = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        grid.add_row(*("-" if cell is None or cell == "" else str(cell) for cell in row))
    return grid


def pairs(items: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value view of one object."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in items:
        if value is not None and value != "":
            grid.add_row(name, str(value))
    return grid


def when(unix: float | None) -> str:
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S") if unix else "-"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"
