"""The one check of every string a request hands to Postgres: ids and names in a path, a query or a body, the
job spec's strings (stored as JSONB), an upload's filename, an Idempotency-Key, job `metadata`.

Postgres refuses a NUL character in `text`, `varchar` and `jsonb` alike, a lone surrogate (JSON's "\\ud800")
cannot be encoded to UTF-8 at all, and a `varchar(n)` refuses a longer value: each of these reached the database
and came back as a 500 (and an upload's bytes stayed in the artifact store with no row). They are refused here
with a 400 that names the field instead.

Two doors, one rule (`string_problem`):
- pydantic fields, path and query parameters use the `Name` type (or `metadata_field`): the error is the custom
  pydantic error `invalid_string` (`invalid_metadata`), which common/http_errors.py answers with 400 and the
  field's location as `param`;
- values that arrive outside pydantic (a header a service checks, a multipart filename) go through
  `check_string`, which raises `InvalidRequest` naming the `param`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from common.errors import InvalidRequest

MAX_NAME_LENGTH = 512  # ids, names, cursors: the longest id column (models.id, files.filename) is varchar(512)
MAX_IDEMPOTENCY_KEY_LENGTH = 255  # jobs.idempotency_key and files.idempotency_key are varchar(255)
MAX_USER_LENGTH = 64  # api_keys.user_name, jobs.user_name and files.user_name are varchar(64)

# OpenAI's bounds on `metadata`.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512

INVALID_STRING = "invalid_string"
INVALID_METADATA = "invalid_metadata"
# The pydantic error types that are a 400 (a value the service cannot store), not a 422 (common/http_errors.py).
BAD_REQUEST_ERRORS = frozenset({INVALID_STRING, INVALID_METADATA})

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def string_problem(value: str, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """What is wrong with `value` as a string the database stores or compares, in words that say the fix; None
    when nothing is."""
    if len(value) > max_length:
        return f"must be at most {max_length} characters; got {len(value)}"
    bad = _UNSTORABLE.search(value)
    if bad is None:
        return None
    if bad.group() == "\x00":
        return f"must not contain a NUL character (\\x00); got one at position {bad.start()}: remove it"
    return (f"must be valid Unicode; got a lone surrogate (\\u{ord(bad.group()):04x}) at position {bad.start()}: "
            "send the character itself or its UTF-16 pair")


def check_string(value: str | None, *, param: str, max_length: int = MAX_NAME_LENGTH, what: str | None = None
                 ) -> str | None:
    """`value` unchanged, or 400 `invalid_string` on `param` (`what` names it in the message if not `param`)."""
    if value is not None and (problem := string_problem(value, max_length)) is not None:
        raise InvalidRequest(f"{what or f'`{param}`'} {problem}", param=param, code=INVALID_STRING)
    return value


def _refusing(problem_of: Callable[[str], str | None]) -> Callable[[str], str]:
    """A pydantic validator: the value unchanged, or the custom error `invalid_string` saying `problem_of` it."""
    def validate(value: str) -> str:
        problem = problem_of(value)
        if problem is not None:
            raise PydanticCustomError(INVALID_STRING, problem)
        return value
    return validate


Name = Annotated[str, AfterValidator(_refusing(string_problem))]
"""A string of at most MAX_NAME_LENGTH characters that Postgres can store: for ids, names and short values in a
body, a path or a query."""


_USER = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@+-]{{0,{MAX_USER_LENGTH - 1}}}")


def user_problem(value: str) -> str | None:
    """What is wrong with `value` as a user name within a tenant (`alice`, `alice@example.com`, `ci-bot`)."""
    if _USER.fullmatch(value):
        return None
    shown = value if len(value) <= 80 else value[:80] + "…"
    return (f"must be 1 to {MAX_USER_LENGTH} characters, letters, digits and . _ @ + -, starting with a letter or "
            f"a digit; got {shown!r}")


def check_user_name(value: str, *, param: str = "user") -> str:
    """`value` unchanged, or 400 `invalid_string` on `param`."""
    if (problem := user_problem(value)) is not None:
        raise InvalidRequest(f"`{param}` {problem}", param=param, code=INVALID_STRING)
    return value


UserName = Annotated[str, AfterValidator(_refusing(user_problem))]
"""A user name within a tenant (`user_problem`): in a body or a query."""


def _metadata(value: Any) -> Any:
    """OpenAI's metadata: an object of at most 16 string pairs, keys ≤ 64 and values ≤ 512 characters."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PydanticCustomError(INVALID_METADATA, "must be an object of string keys and string values; got "
                                  "{kind}", {"kind": type(value).__name__})
    if len(value) > MAX_METADATA_PAIRS:
        raise PydanticCustomError(INVALID_METADATA, "may hold at most {limit} pairs; got {count}: remove some",
                                  {"limit": MAX_METADATA_PAIRS, "count": len(value)})
    for key, item in value.items():
        problem = string_problem(key, MAX_METADATA_KEY_LENGTH)
        if problem is not None:
            raise PydanticCustomError(INVALID_METADATA, "key {key}: {problem}",
                                      {"key": repr(key[:MAX_METADATA_KEY_LENGTH]), "problem": problem})
        if not isinstance(item, str):
            raise PydanticCustomError(INVALID_METADATA, "the value of {key} must be a string; got {kind}",
                                      {"key": repr(key), "kind": type(item).__name__})
        problem = string_problem(item, MAX_METADATA_VALUE_LENGTH)
        if problem is not None:
            raise PydanticCustomError(INVALID_METADATA, "the value of {key} {problem}",
                                      {"key": repr(key), "problem": problem})
    return value


Metadata = Annotated[dict[str, str], BeforeValidator(_metadata)]
"""Job `metadata`: checked whole (`_metadata`), so that every error names `metadata` itself."""

_METADATA_QUERY = re.compile(r"metadata\[(.*)\]", re.DOTALL)


def metadata_query(params: Any) -> dict[str, str] | None:
    """OpenAI's list filter `?metadata[key]=value` (repeatable; every pair must match) from a request's query
    parameters (`multi_items()`), or None when there is none. Each key and value is checked as job metadata is;
    a parameter that starts with `metadata` but is not `metadata[key]`, or a key given twice, is a 400 naming it."""
    pairs: dict[str, str] = {}
    for name, value in params.multi_items():
        if not name.startswith("metadata"):
            continue
        match = _METADATA_QUERY.fullmatch(name)
        if match is None:
            raise InvalidRequest(f"`{name[:80]}`: filter on metadata as metadata[key]=value, e.g. "
                                 "?metadata[team]=search", param="metadata", code=INVALID_METADATA)
        key = match.group(1)
        if key in pairs:
            raise InvalidRequest(f"`metadata[{key[:MAX_METADATA_KEY_LENGTH]}]` is given twice: a job holds one value "
                                 "per key; give it once", param="metadata", code=INVALID_METADATA)
        pairs[key] = value
    if not pairs:
        return None
    try:
        _metadata(pairs)
    except PydanticCustomError as exc:
        raise InvalidRequest(f"`metadata` filter: {exc.message()}", param="metadata", code=INVALID_METADATA) from None
    return pairs
