"""Checks for OpenAI-style message lists ({"role", "content"} objects), shared by the chat format, the
conversational preference/KTO shapes and OpenAI's DPO format. The categories follow OpenAI's cookbook
("Data preparation and analysis for chat model fine-tuning")."""

from __future__ import annotations

from typing import Any

from common.datasets.checks import closest, did_you_mean, kind, short
from common.datasets.report import Issue

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")
ROLE_SYNONYMS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "function": "tool",
    "developer": "system",
}


def check_messages(
    value: Any,
    path: str,
    issues: list[Issue],
    *,
    need_assistant: bool = True,
    roles: tuple[str, ...] = ROLES,
) -> None:
    """Append an Issue for every problem in a list of messages found at `path` (e.g. "messages")."""
    if not isinstance(value, list):
        issues.append(
            Issue(
                path,
                "wrong_type",
                f"{path} is {kind(value)}; it must be a list of messages like "
                '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]',
            )
        )
        return
    if not value:
        issues.append(Issue(path, "missing_messages", f"{path} is an empty list; add the conversation's messages"))
        return
    seen_assistant = False
    bad_role = False
    for i, message in enumerate(value):
        role = _check_message(message, f"{path}[{i}]", issues, roles)
        seen_assistant = seen_assistant or role == "assistant"
        bad_role = bad_role or role is None
    if need_assistant and not seen_assistant and not bad_role and "assistant" in roles:
        issues.append(
            Issue(
                path,
                "no_assistant_message",
                f"{path} has no assistant message; add at least one "
                '{"role": "assistant", "content": "..."} (the model learns from assistant turns)',
            )
        )


def _check_message(message: Any, mpath: str, issues: list[Issue], roles: tuple[str, ...]) -> str | None:
    """Check one message; return its role when valid, None when the role is missing or wrong (or the message
    is not an object at all)."""
    if not isinstance(message, dict):
        issues.append(
            Issue(
                mpath,
                "not_an_object",
                f'{mpath} is {kind(message)}; each message must be an object like {{"role": "user", "content": "..."}}',
            )
        )
        return None  # it may have been the assistant turn: don't also report that one is missing
    misspelt: set[str] = set()  # keys an unknown key was probably meant to be
    for key in message:
        if key not in MESSAGE_KEYS:
            guess = closest(key, MESSAGE_KEYS)
            hint = f" (did you mean '{guess}'?)" if guess else ""
            misspelt.add(guess or "")
            issues.append(
                Issue(
                    f"{mpath}.{key}",
                    "unknown_key",
                    f"{mpath}.{key} is not a message key{hint}; allowed keys are "
                    f"{', '.join(MESSAGE_KEYS)}. Rename or remove '{key}'",
                )
            )
    # A misspelt 'role' or 'content' was reported above; don't report it missing as well.
    role_misspelt = "role" in misspelt and "role" not in message
    role = None if role_misspelt else _check_role(message, mpath, issues, roles)
    if not ("content" in misspelt and "content" not in message):
        _check_content(message, mpath, role, issues)
    _check_extras(message, mpath, role, issues)
    return role


def _check_role(message: dict[str, Any], mpath: str, issues: list[Issue], roles: tuple[str, ...]) -> str | None:
    field = f"{mpath}.role"
    if "role" not in message:
        issues.append(Issue(field, "missing_role", f"{mpath} has no 'role'; set it to one of {', '.join(roles)}"))
        return None
    role = message["role"]
    if not isinstance(role, str):
        issues.append(Issue(field, "wrong_type", f"{field} is {kind(role)}; it must be one of {', '.join(roles)}"))
        return None
    if role not in roles:
        hint = did_you_mean(role, roles, ROLE_SYNONYMS)
        issues.append(
            Issue(
                field,
                "unrecognized_role",
                f"{field} is {short(role)}; expected one of {', '.join(roles)}{hint}",
            )
        )
        return None
    return role


def _check_content(message: dict[str, Any], mpath: str, role: str | None, issues: list[Issue]) -> None:
    field = f"{mpath}.content"
    calls = role == "assistant" and bool(message.get("tool_calls") or message.get("function_call"))
    content = message.get("content")
    if content is None:
        if calls:
            return
        said = "is null" if "content" in message else "is missing"
        issues.append(Issue(field, "missing_content", f"{field} {said}; give the message its text as a string"))
        return
    if isinstance(content, str):
        if not content.strip():
            issues.append(Issue(field, "missing_content", f"{field} is empty; give the message its text"))
        return
    if not isinstance(content, list):
        issues.append(
            Issue(
                field,
                "wrong_type",
                f'{field} is {kind(content)}; it must be a string or a list of {{"type": "text", "text": "..."}} parts',
            )
        )
        return
    text_seen = False
    before = len(issues)
    for j, part in enumerate(content):
        ppath = f"{field}[{j}]"
        if not isinstance(part, dict):
            issues.append(Issue(ppath, "wrong_type", f'{ppath} is {kind(part)}; use {{"type": "text", "text": "..."}}'))
        elif part.get("type") != "text":
            issues.append(
                Issue(
                    f"{ppath}.type",
                    "wrong_type",
                    f"{ppath}.type is {short(part.get('type'))}; only 'text' parts can be trained on",
                )
            )
        elif not isinstance(part.get("text"), str):
            issues.append(
                Issue(
                    f"{ppath}.text",
                    "wrong_type",
                    f"{ppath}.text is {kind(part.get('text'))}; it must be a string",
                )
            )
        elif part["text"].strip():
            text_seen = True
    if not content or (not text_seen and len(issues) == before):
        issues.append(Issue(field, "missing_content", f"{field} has no text; give the message its text"))


def _check_extras(message: dict[str, Any], mpath: str, role: str | None, issues: list[Issue]) -> None:
    if "weight" in message:
        weight = message["weight"]
        field = f"{mpath}.weight"
        if role is not None and role != "assistant":
            issues.append(
                Issue(
                    field,
                    "invalid_weight",
                    f"{field} is set on a {role} message; only assistant messages take a weight. Remove it",
                )
            )
        elif isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
            issues.append(
                Issue(
                    field,
                    "invalid_weight",
                    f"{field} is {short(weight)}; use 0 (do not train on this message) or 1 (train on it)",
                )
            )
    for key in ("name", "tool_call_id"):
        if key in message and not isinstance(message[key], str):
            field = f"{mpath}.{key}"
            issues.append(Issue(field, "wrong_type", f"{field} is {kind(message[key])}; it must be a string"))
    calls = message.get("tool_calls")
    if calls is None:
        return
    field = f"{mpath}.tool_calls"
    if role is not None and role != "assistant":
        issues.append(
            Issue(
                field,
                "wrong_type",
                f"{field} is set on a {role} message; only assistant messages make tool calls",
            )
        )
    elif not isinstance(calls, list):
        issues.append(Issue(field, "wrong_type", f"{field} is {kind(calls)}; it must be a list of tool calls"))
    else:
        for k, call in enumerate(calls):
            _check_tool_call(call, f"{field}[{k}]", issues)


def _check_tool_call(call: Any, cpath: str, issues: list[Issue]) -> None:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        issues.append(
            Issue(
                cpath,
                "wrong_type",
                f'{cpath} must be {{"type": "function", "function": {{"name": ..., "arguments": "<JSON string>"}}}}',
            )
        )
        return
    if not isinstance(function.get("name"), str) or not function["name"]:
        field = f"{cpath}.function.name"
        issues.append(Issue(field, "wrong_type", f"{field} must be the tool's name as a string"))
    if not isinstance(function.get("arguments"), str):
        field = f"{cpath}.function.arguments"
        issues.append(
            Issue(
                field,
                "wrong_type",
                f"{field} is {kind(function.get('arguments'))}; it must be a JSON string "
                "(serialise the arguments with json.dumps)",
            )
        )
