"""Small helpers the format checks share: naming JSON types, suggesting the closest word, required keys and
text fields."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from typing import Any

from common.datasets.report import Issue


def kind(value: Any) -> str:
    """How a JSON value reads in a message: 'a string', 'an object', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def closest(word: str, choices: Iterable[str], synonyms: dict[str, str] | None = None) -> str | None:
    """The choice `word` most likely meant (case, a synonym, or a typo away), or None."""
    low = word.strip().lower()
    if synonyms and low in synonyms:
        return synonyms[low]
    if len(low) > 64:  # no key or role is that long; and keep the cache small
        return None
    return _closest(low, tuple(choices))


@functools.lru_cache(maxsize=4096)  # a broken file repeats the same typo on every row
def _closest(low: str, options: tuple[str, ...]) -> str | None:
    if low in options:
        return low
    close = difflib.get_close_matches(low, options, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], synonyms: dict[str, str] | None = None) -> str:
    """' (did you mean 'assistant'?)' or ''."""
    guess = closest(word, choices, synonyms)
    return f" (did you mean '{guess}'?)" if guess else ""


def short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_key(row: dict[str, Any], key: str, issues: list[Issue], example: str) -> bool:
    """Report `key` missing (naming a likely typo); True when it is present."""
    if key in row:
        return True
    typo = next((k for k in row if did_you_mean(k, [key]) and k != key), None)
    hint = f" (found '{typo}': did you mean '{key}'?)" if typo else ""
    code = "missing_messages" if key == "messages" else "missing_field"
    issues.append(Issue(key, code, f"the row has no '{key}'{hint}; add it, e.g. {example}"))
    return False


def require_text(value: Any, field: str, issues: list[Issue], *, optional: bool = False) -> bool:
    """A non-empty string (or, if optional, null/absent). True when usable."""
    if value is None and optional:
        return True
    if not isinstance(value, str):
        issues.append(Issue(field, "wrong_type", f"{field} is {kind(value)}; it must be a string"))
        return False
    if not value.strip() and not optional:
        issues.append(Issue(field, "missing_content", f"{field} is empty; give it text"))
        return False
    return True


# A NUL (Postgres refuses it in text and jsonb) or a lone UTF-16 surrogate (JSON's "\ud800" escape without its
# pair: not a character, it cannot be encoded as UTF-8, so tokenizers and Postgres refuse it).
BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def text_issue(value: Any) -> Issue | None:
    """The first string of a parsed row (keys too, in document order) holding a NUL or a lone surrogate, as an
    `invalid_text` issue naming where it is; None when the row is clean."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            found = BAD_CHARACTER.search(item)
            if found:
                return _bad_text(where or "the row", found.group(), key=False)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                in_key = BAD_CHARACTER.search(key) if isinstance(key, str) else None
                if in_key:
                    return _bad_text(where or "the row", in_key.group(), key=True)
                children.append((child, f"{where}.{key}" if where else str(key)))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{where}[{i}]") for i, child in enumerate(item)]))
    return None


def _bad_text(where: str, char: str, *, key: bool) -> Issue:
    what = f"a key of {where}" if key else where
    field = None if where == "the row" else where
    if char == "\x00":
        text = (f"{what} contains a NUL character (\\u0000); remove it (it cannot be stored or trained on, and is "
                "usually left over from a binary or UTF-16 file)")
    else:
        text = (f"{what} contains a lone surrogate (\\u{ord(char):04x}), half of a UTF-16 pair and not a "
                "character; write the character itself, or both halves of the pair (e.g. \\ud83d\\ude00)")
    return Issue(field, "invalid_text", text)
