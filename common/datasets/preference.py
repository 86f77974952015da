"""Checks for the rows that compare or label completions: preference pairs (TRL's prompt/chosen/rejected, as
plain text or as message lists, and OpenAI's DPO format) and KTO's prompt/completion/label."""

from __future__ import annotations

from typing import Any

from common.datasets.chat import check_messages
from common.datasets.checks import kind, require_key, require_text, short
from common.datasets.report import Issue


def check_preference(row: dict[str, Any], issues: list[Issue]) -> None:
    if "preferred_output" in row or "non_preferred_output" in row or ("input" in row and "chosen" not in row):
        _check_openai_dpo(row, issues)
        return
    prompt = row.get("prompt")
    conversational = isinstance(prompt, list) or isinstance(row.get("chosen"), list)
    if prompt is not None:
        _prompt(prompt, "prompt", issues)
    for key in ("chosen", "rejected"):
        if require_key(row, key, issues, '{"prompt": "...", "chosen": "...", "rejected": "..."}'):
            _answer(row[key], key, conversational, issues)


def _check_openai_dpo(row: dict[str, Any], issues: list[Issue]) -> None:
    example = '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}'
    if require_key(row, "input", issues, example):
        inp = row["input"]
        if not isinstance(inp, dict):
            issues.append(Issue("input", "wrong_type", f'input is {kind(inp)}; it must be {{"messages": [...]}}'))
        elif "messages" not in inp:
            issues.append(
                Issue(
                    "input.messages",
                    "missing_messages",
                    "input has no 'messages'; add the prompt "
                    'conversation, e.g. {"messages": [{"role": "user", "content": "..."}]}',
                )
            )
        else:
            check_messages(inp["messages"], "input.messages", issues, need_assistant=False)
    for key in ("preferred_output", "non_preferred_output"):
        if require_key(row, key, issues, example):
            check_messages(row[key], key, issues, roles=("assistant",))


def _prompt(value: Any, field: str, issues: list[Issue]) -> None:
    if isinstance(value, list):
        check_messages(value, field, issues, need_assistant=False)
    else:
        require_text(value, field, issues)


def _answer(value: Any, field: str, conversational: bool, issues: list[Issue]) -> None:
    if conversational:
        check_messages(value, field, issues)
    elif isinstance(value, list):
        issues.append(
            Issue(
                field,
                "wrong_type",
                f"{field} is a list of messages but the prompt is a string; use "
                "strings for both, or message lists for both",
            )
        )
    else:
        require_text(value, field, issues)


def check_kto(row: dict[str, Any], issues: list[Issue]) -> None:
    example = '{"prompt": "...", "completion": "...", "label": true}'
    if require_key(row, "prompt", issues, example):
        _prompt(row["prompt"], "prompt", issues)
    if require_key(row, "completion", issues, example):
        _answer(row["completion"], "completion", isinstance(row.get("prompt"), list), issues)
    if require_key(row, "label", issues, example) and not isinstance(row["label"], bool):
        issues.append(
            Issue(
                "label",
                "wrong_type",
                f"label is {short(row['label'])}; it must be true (a desirable "
                "completion) or false (an undesirable one)",
            )
        )
