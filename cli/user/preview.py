"""A file preview (`GET /files/{id}/preview`) for the terminal: each row's rendered text, the trained spans
highlighted. Without colours (a pipe, NO_COLOR) trained spans are put between ⟦ and ⟧ instead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from cli.user.output import printable

TRAINED_STYLE = "bold black on green"
CONTEXT_STYLE = "dim"
OPEN, CLOSE = "⟦", "⟧"


def render_preview(preview: dict[str, Any], *, colour: bool) -> Iterator[RenderableType]:
    yield Text(f"{preview.get('file_id')}: {preview.get('format')} rows as stage {preview.get('stage')} on "
               f"{preview.get('base_model')} (template {preview.get('template')}, train_on_inputs "
               f"{str(preview.get('train_on_inputs')).lower()})")
    legend = Text("legend: ")
    legend.append(*(("trained", TRAINED_STYLE) if colour else (f"{OPEN}trained{CLOSE}",)))
    legend.append(" tokens carry the loss; ")
    legend.append("context", CONTEXT_STYLE if colour else None)
    legend.append(" tokens do not")
    yield legend
    for row in preview.get("data", []):
        yield Text("")
        yield Text(f"── line {row.get('line')} " + "─" * 40, style="bold")
        if row.get("error"):
            yield Text(f"error: {row['error']}", style="red")
            continue
        for sequence in row.get("sequences", []):
            yield Text(f"[{sequence.get('name')}: {sequence.get('tokens')} tokens, "
                       f"{sequence.get('trained_tokens')} trained]", style="cyan")
            yield spans(sequence.get("segments", []), colour=colour)


def spans(segments: list[dict[str, Any]], *, colour: bool) -> Text:
    text = Text()
    for segment in segments:
        part = printable(str(segment.get("text", "")))
        if segment.get("trained"):
            text.append(part, TRAINED_STYLE) if colour else text.append(f"{OPEN}{part}{CLOSE}")
        else:
            text.append(part, CONTEXT_STYLE if colour else None)
    return text
