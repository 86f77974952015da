"""Turn valid rows into the shape the trainer reads for a stage (`iter_stage_rows`, the one normaliser the
worker's prepare step calls). Invalid rows are skipped: validate first.

sft (chat, sharegpt, alpaca) → {"messages": [{"role", "content", ("weight"), ("name"), ("tool_calls"),
("tool_call_id")}], ("tools")}:
- chat: content given as text parts is joined into one string (parts concatenated as given); `name`,
  `tool_calls`, `tool_call_id` and `weight` are kept; an assistant tool call with null content gets "".
- sharegpt: human → user, gpt → assistant, system → system, observation → tool, function_call → an assistant
  message carrying `tool_calls` (its value is the JSON call); a top-level `system` becomes the first message.
- alpaca: system → system message; each history [q, a] → user, assistant; then instruction (+ "\\n" + input)
  → user and output → assistant.
  A row's `tools` list (chat, sharegpt) is kept beside `messages`.
dpo, orpo, rm (preference) → {"prompt": [messages], "chosen": [messages], "rejected": [messages], ("tools")}:
- OpenAI DPO: input.messages → prompt, preferred_output → chosen, non_preferred_output → rejected, input.tools
  → tools.
- prompt/chosen/rejected: a string prompt is one user message, a string answer one assistant message. Without
  a prompt, message lists give up their longest common leading messages as the prompt (TRL's implicit prompt;
  each side keeps at least its last message); strings give an empty prompt.
kto → {"prompt": [messages], "completion": [messages], "label": bool}, strings as for preference.
pt (text) → {"text": str}. Chat-like formats do not feed pt: rendering them needs a chat template, which is
  what sft is for.
`weight` is kept only for sft; the other stages train on their whole completion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.datasets.checks import text_issue
from common.datasets.formats import CHAT_FORMATS, FORMATS, STAGES, check_row, detect_format
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


STAGE_FORMATS: dict[str, list[str]] = {
    stage: [fmt for fmt, stages in STAGES.items() if stage in stages]
    for stage in dict.fromkeys(sum(STAGES.values(), []))
}


def iter_valid_rows(path: Path, format: str, *, name: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield each row of `path` that is a valid row of `format`, unchanged."""
    for _, row in iter_valid_records(path, format, name=name):
        yield row


def iter_valid_records(path: Path, format: str, *, name: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) for each valid row of `format` in `path`; `line` as in validation errors."""
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    for record in iter_records(Path(path), name):
        row = record.value
        if record.issue is not None or not isinstance(row, dict):
            continue
        if detect_format(row) not in (None, format) or check_row(format, row) or text_issue(row):
            continue
        yield record.line, row


def iter_chat_rows(path: Path, format: str) -> Iterator[dict[str, Any]]:
    """Yield each valid row normalized to {"messages": [{"role","content"}...]} (for chat, sharegpt, alpaca
    incl. system/history)."""
    if format not in CHAT_FORMATS:
        raise ValueError(f"format {format!r} does not convert to chat; expected one of {', '.join(CHAT_FORMATS)}")
    for row in iter_valid_rows(path, format):
        yield to_chat(format, row)


def check_stage(format: str, stage: str) -> None:
    """Raise ValueError, saying what would fit, when a `format` file cannot feed `stage`."""
    if stage not in STAGE_FORMATS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_FORMATS)}")
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    if stage not in STAGES[format]:
        raise ValueError(
            f"a {format} file feeds {', '.join(STAGES[format])}, not {stage}; stage {stage} needs a file in "
            f"{' or '.join(STAGE_FORMATS[stage])} format (see docs/datasets.md)"
        )


def iter_stage_rows(path: Path, format: str, stage: str, *, name: str | None = None) -> Iterator[dict[str, Any]]:
    """Each valid row of a `format` file in the shape the trainer reads for `stage` (see the module doc).
    Raises ValueError when the format does not feed the stage."""
    for _, row in iter_stage_records(path, format, stage, name=name):
        yield row


def iter_stage_records(
    path: Path, format: str, stage: str, *, name: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) pairs of `iter_stage_rows`."""
    check_stage(format, stage)
    for line, row in iter_valid_records(path, format, name=name):
        yield line, to_stage_row(format, stage, row)


def to_stage_row(format: str, stage: str, row: dict[str, Any]) -> dict[str, Any]:
    """One valid row of `format` in the shape of `stage`."""
    check_stage(format, stage)
    if stage == "sft":
        return to_chat(format, row)
    if stage == "kto":
        return {
            "prompt": _side(row["prompt"], "user"),
            "completion": _side(row["completion"], "assistant"),
            "label": row["label"],
        }
    if stage == "pt":
        return {"text": row["text"]}
    return _pair(row)


def _side(value: Any, role: str) -> list[dict[str, Any]]:
    """A string as one message of `role`; a list of messages normalised (without weights)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [_chat_message(m, keep_weight=False) for m in value]


def _pair(row: dict[str, Any]) -> dict[str, Any]:
    if "chosen" not in row:  # OpenAI DPO
        out: dict[str, Any] = {
            "prompt": _side(row["input"]["messages"], "user"),
            "chosen": _side(row["preferred_output"], "assistant"),
            "rejected": _side(row["non_preferred_output"], "assistant"),
        }
        if row["input"].get("tools"):
            out["tools"] = row["input"]["tools"]
        return out
    prompt = row.get("prompt")
    chosen, rejected = _side(row["chosen"], "assistant"), _side(row["rejected"], "assistant")
    if prompt is not None:
        return {"prompt": _side(prompt, "user"), "chosen": chosen, "rejected": rejected}
    if isinstance(row["chosen"], str):
        return {"prompt": [], "chosen": chosen, "rejected": rejected}
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


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


def _chat_message(message: dict[str, Any], *, keep_weight: bool = True) -> dict[str, Any]:
    out = {"role": message["role"], "content": _content_text(message.get("content"))}
    for key in KEPT_MESSAGE_KEYS:
        if message.get(key) is not None and (keep_weight or key != "weight"):
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
