"""Dataset formats: which one a row is (by its keys), the training stages each can feed, and per-row checks.

| format     | a row looks like                                                           | stages          |
| ---------- | -------------------------------------------------------------------------- | --------------- |
| chat       | {"messages": [{"role", "content"}, ...]}  (OpenAI chat fine-tuning)         | sft             |
| sharegpt   | {"conversations": [{"from": "human"/"gpt"/..., "value"}], "system"?}       | sft             |
| alpaca     | {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}  | sft             |
| preference | {"prompt"?, "chosen", "rejected"} (TRL) or OpenAI DPO {"input": {"messages"}, | dpo, orpo, rm |
|            | "preferred_output", "non_preferred_output"}                                |                 |
| kto        | {"prompt", "completion", "label": true/false}                              | kto             |
| text       | {"text"}                                                                   | pt              |
"""

from __future__ import annotations

from typing import Any

from common.datasets.chat import check_messages
from common.datasets.checks import did_you_mean, kind, require_key, require_text, short
from common.datasets.preference import check_kto, check_preference
from common.datasets.report import Issue

STAGES: dict[str, list[str]] = {
    "chat": ["sft"],
    "sharegpt": ["sft"],
    "alpaca": ["sft"],
    "preference": ["dpo", "orpo", "rm"],
    "kto": ["kto"],
    "text": ["pt"],
}
FORMATS = tuple(STAGES)
CHAT_FORMATS = ("chat", "sharegpt", "alpaca")
SIGNATURES = {
    "chat": "'messages'",
    "sharegpt": "'conversations'",
    "alpaca": "'instruction' and 'output'",
    "preference": "'chosen' and 'rejected' (or 'preferred_output' and 'non_preferred_output')",
    "kto": "'completion' and 'label'",
    "text": "'text'",
}
SIGNATURE_KEYS = (
    "messages", "conversations", "instruction", "output", "chosen", "rejected", "preferred_output",
    "non_preferred_output", "prompt", "completion", "label", "text",
)  # fmt: skip
SHAREGPT_ROLES = ("human", "gpt", "system", "function_call", "observation")
SHAREGPT_ALIASES = ("user", "assistant", "tool")  # accepted too: some exports use chat role names


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row's keys announce, or None when they announce none."""
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if ("chosen" in row and "rejected" in row) or "preferred_output" in row or "non_preferred_output" in row:
        return "preference"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "completion" in row and "label" in row:
        return "kto"
    if "text" in row:
        return "text"
    return None


def check_object(value: Any) -> Issue | None:
    if isinstance(value, dict):
        return None
    return Issue(
        None,
        "not_an_object",
        f'the row is {kind(value)}; each row must be a JSON object like {{"messages": [...]}}',
    )


def check_row(fmt: str, row: dict[str, Any]) -> list[Issue]:
    """Every problem in one row that should be of format `fmt`; empty when the row is good."""
    issues: list[Issue] = []
    _CHECKS[fmt](row, issues)
    return issues


def unknown_format_text(row: dict[str, Any]) -> str:
    keys = ", ".join(repr(k) for k in list(row)[:8]) or "no keys"
    hints = {did_you_mean(k, SIGNATURE_KEYS) for k in row if k not in SIGNATURE_KEYS} - {""}
    hint = f"{sorted(hints)[0].strip()} " if len(hints) == 1 else ""
    expected = "; ".join(f"{sig} for {fmt}" for fmt, sig in SIGNATURES.items())
    return (
        f"cannot tell the dataset format from the keys {keys} {hint}— a row needs {expected}. "
        "Rename the keys, or pass the format explicitly"
    )


def _check_chat(row: dict[str, Any], issues: list[Issue]) -> None:
    if require_key(row, "messages", issues, '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'):
        check_messages(row["messages"], "messages", issues)
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        issues.append(Issue("tools", "wrong_type", f"tools is {kind(tools)}; it must be a list of tool definitions"))


def _check_sharegpt(row: dict[str, Any], issues: list[Issue]) -> None:
    conv = row.get("conversations")
    if not require_key(row, "conversations", issues, '{"conversations": [{"from": "human", "value": "..."}, ...]}'):
        return
    if not isinstance(conv, list) or not conv:
        said = "an empty list" if conv == [] else kind(conv)
        issues.append(
            Issue(
                "conversations",
                "wrong_type" if conv != [] else "missing_messages",
                f"conversations is {said}; it must be a list of "
                '{"from": "human" | "gpt" | ..., "value": "..."} turns',
            )
        )
        return
    allowed = SHAREGPT_ROLES + SHAREGPT_ALIASES
    seen_gpt, unsure = False, False
    for i, turn in enumerate(conv):
        tpath = f"conversations[{i}]"
        if not isinstance(turn, dict):
            issues.append(
                Issue(
                    tpath,
                    "not_an_object",
                    f'{tpath} is {kind(turn)}; each turn must be an object like {{"from": "human", "value": "..."}}',
                )
            )
            unsure = True
            continue
        role_key = "from" if "from" in turn or "role" not in turn else "role"
        value_key = "value" if "value" in turn or "content" not in turn else "content"
        role = turn.get(role_key)
        if role_key not in turn:
            issues.append(
                Issue(
                    f"{tpath}.from",
                    "missing_role",
                    f"{tpath} has no 'from'; set it to one of {', '.join(SHAREGPT_ROLES)}",
                )
            )
            unsure = True
        elif role not in allowed:
            hint = did_you_mean(str(role), SHAREGPT_ROLES, {"user": "human", "assistant": "gpt"})
            issues.append(
                Issue(
                    f"{tpath}.{role_key}",
                    "unrecognized_role",
                    f"{tpath}.{role_key} is {short(role)}; expected one of {', '.join(SHAREGPT_ROLES)}{hint}",
                )
            )
            unsure = True
        seen_gpt = seen_gpt or role in ("gpt", "assistant", "function_call")
        if value_key not in turn or turn[value_key] is None:
            issues.append(
                Issue(
                    f"{tpath}.{value_key}",
                    "missing_content",
                    f"{tpath} has no '{value_key}'; give the turn its text",
                )
            )
        else:
            require_text(turn[value_key], f"{tpath}.{value_key}", issues)
    if not seen_gpt and not unsure:
        issues.append(
            Issue(
                "conversations",
                "no_assistant_message",
                "conversations has no 'gpt' turn; add at least "
                'one {"from": "gpt", "value": "..."} (the model learns from those turns)',
            )
        )
    if "system" in row:
        require_text(row["system"], "system", issues, optional=True)


def _check_alpaca(row: dict[str, Any], issues: list[Issue]) -> None:
    has_instruction = require_key(row, "instruction", issues, '{"instruction": "...", "output": "..."}')
    if require_key(row, "output", issues, '{"instruction": "...", "output": "..."}'):
        require_text(row["output"], "output", issues)
    for key in ("input", "system"):
        if key in row:
            require_text(row[key], key, issues, optional=True)
    if (
        has_instruction
        and require_text(row["instruction"], "instruction", issues, optional=True)
        and not (row["instruction"] or "").strip()
        and not (row.get("input") or "").strip()
    ):
        issues.append(
            Issue(
                "instruction",
                "missing_content",
                "instruction and input are both empty; give the instruction text",
            )
        )
    history = row.get("history")
    if history is None:
        return
    if not isinstance(history, list):
        issues.append(
            Issue(
                "history",
                "wrong_type",
                f'history is {kind(history)}; it must be a list of ["question", "answer"] pairs',
            )
        )
        return
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            issues.append(
                Issue(
                    f"history[{i}]",
                    "wrong_type",
                    f"history[{i}] is {short(pair)}; each history item "
                    'must be a ["question", "answer"] pair of strings',
                )
            )


def _check_text(row: dict[str, Any], issues: list[Issue]) -> None:
    if require_key(row, "text", issues, '{"text": "..."}'):
        require_text(row["text"], "text", issues)


_CHECKS = {
    "chat": _check_chat,
    "sharegpt": _check_sharegpt,
    "alpaca": _check_alpaca,
    "preference": check_preference,
    "kto": check_kto,
    "text": _check_text,
}
