"""Server-Sent Events as `GET /jobs/{id}/events?stream=true` sends them: frames with an `id` (the event's `seq`),
an `event` name (`message` for the job's events, `progress` for live progress, `done` at the end, `error` when the
key stops working) and JSON `data`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Frame:
    event: str
    data: Any
    id: str | None = None


def frames(lines: Iterable[str]) -> Iterator[Frame]:
    """The frames of a stream's lines (comments, the keep-alives, are skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield Frame(event=fields.get("event", "message"), data=json.loads(fields["data"]), id=fields.get("id"))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value
