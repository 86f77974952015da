"""The wire between the training child and its parent: lines on the child's stdout that start with PREFIX and
carry one JSON object. Everything else the child prints is library noise and is ignored."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "TUNEQUEUE_EVENT "


def parse_line(line: str) -> dict[str, Any] | None:
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "type" in event else None
