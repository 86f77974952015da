"""Turn valid rows of the SFT formats into one shape, {"messages": [{"role", "content"}, ...]}, for training.

- chat: content given as text parts is joined into one string (parts concatenated as given); `name`,
  `tool_calls`, `tool_call_id` and `weight` are kept; an assistant tool call with null content gets "".
- sharegpt: human → user, gpt → assistant, system → system, observation → tool, function_call → an assistant
  message carrying `tool_calls` (its value is the JSON call); a top-level `system` becomes the first message.
- alpaca: system → system message; each history [q, a] → user, assistant; then instruction (+ "\\n" + input)
  → user and output → assistant.
A row's `tools` list (chat, sharegpt) is kept beside `messages`. Invalid rows are skipped: validate first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.datasets.formats import CHAT_FORMATS, FORMATS, check_row, detect_format
from common.datasets.reader import iter_records

SHAREGPT_TO_CHAT = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "assistant",
}
KEPT_MESSAGE_KEYS = ("name", "tool_calls", "tool_call_id", "weight")


def iter_valid_rows(path: Path, format: str) -> Iterator[dict[str, Any]]:
    """Yield each row of `path` that is a valid row of `format`, unchanged."""
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    for record in iter_records(Path(path)):
        row = record.value
        if record.issue is not None or not isinstance(row, dict):
            continue
        if detect_format(row) not in (None, format) or check_row(format, row):
            continue
        yield row


def iter_chat_rows(path: Path, format: str) -> Iterator[dict[str, Any]]:
    """Yield each valid row normalized to {"messages": [{"role","content"}...]} (for chat, sharegpt, alpaca
    incl. system/history)."""
    if format not in CHAT_FORMATS:
        raise ValueError(f"format {format!r} does not convert to chat; expected one of {', '.join(CHAT_FORMATS)}")
    for row in iter_valid_rows(path, format):
        yield to_chat(format, row)


def to_chat(format: str, row: dict[str, Any]) -> dict[str, Any]:
    """One valid row of `format` as {"messages": [...]} (plus "tools" when the row has them)."""
    if format == "chat":
        out: dict[str, Any] = {"messages": [_chat_message(m) for m in row["messages"]]}
    elif format == "sharegpt":
        out = {"messages": _sharegpt_messages(row)}
    elif format == "alpaca":
        out = {"messages": _alpaca_messages(row)}
    else:
        raise ValueError(f"format {format!r} does not convert to chat; expected one of {', '.join(CHAT_FORMATS)}")
    if row.get("tools"):
        out["tools"] = row["tools"]
    return out


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    out = {"role": message["role"], "content": _content_text(message.get("content"))}
    for key in KEPT_MESSAGE_KEYS:
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def _sharegpt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    turns = row["conversations"]
    first_role = turns[0].get("from", turns[0].get("role"))
    if isinstance(row.get("system"), str) and row["system"].strip() and first_role != "system":
        messages.append({"role": "system", "content": row["system"]})
    for i, turn in enumerate(turns):
        source = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if source == "function_call":
            calls = _tool_calls(value, i)
            if calls:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
                continue
        messages.append({"role": SHAREGPT_TO_CHAT[source], "content": value})
    return messages


def _tool_calls(value: str, turn: int) -> list[dict[str, Any]] | None:
    """ShareGPT function_call values hold {"name", "arguments"} (or a list of them) as JSON; None if not."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    out = []
    for k, call in enumerate(calls):
        args = call.get("arguments", {})
        out.append(
            {
                "id": f"call_{turn}_{k}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    return out


def _alpaca_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for question, answer in row.get("history") or []:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    instruction = row.get("instruction") or ""
    extra = row.get("input") or ""
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": row["output"]})
    return messages
