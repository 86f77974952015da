"""The error handlers of both HTTP apps (api/main.py and worker/serve/app.py): one per exception family, and
every error leaves as common.errors.error_body's {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import TuneQueueError, error_body
from common.schemas.strings import BAD_REQUEST_ERRORS

_HTTP_TYPES = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


def error_response(exc: TuneQueueError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(status_code=exc.status_code, content=exc.to_body(), headers=headers)


def _shape(status: int, message: str, *, type: str, param: str | None, code: str | None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, type=type, param=param, code=code))


_UNION_TAG = re.compile(r"^(int|float|str|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-\w+\[.*\]|"
                        r"union\[.*\]|tagged-union\[.*\]|json-or-python\[.*\]|lax-or-strict\[.*\])$")


def _loc_to_param(loc: tuple[int | str, ...]) -> str | None:
    # pydantic tags each union branch in `loc` (…learning_rate.float); a user only wants the field.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")
             and not _UNION_TAG.match(str(p))]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or None


def _validation_message(err: dict) -> tuple[str, str]:
    param = _loc_to_param(tuple(err.get("loc", ()))) or "body"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown field `{param}`: remove it (see docs/job-spec.md for the fields this endpoint takes)", \
            "unknown_field"
    if kind == "missing":
        return f"`{param}` is required", "missing_field"
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}", "invalid_json"
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    got = err.get("input")
    suffix = f"; got {got!r}" if got is not None and not isinstance(got, dict | list) and "got" not in msg else ""
    return f"`{param}`: {msg}{suffix}", "invalid_value"


def install(app: FastAPI, log: logging.Logger) -> None:
    """Register the handlers; `log` gets the traceback of an unexpected error."""
    @app.exception_handler(TuneQueueError)
    async def _tunequeue(_: Request, exc: TuneQueueError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # A value the service cannot store (common/schemas/strings.py) is a 400, like any other InvalidRequest;
        # the rest of schema validation (types, ranges, unknown fields) is a 422.
        unstorable = [e for e in errors if e.get("type") in BAD_REQUEST_ERRORS]
        first = unstorable[0] if unstorable else errors[0] if errors else {}
        param = _loc_to_param(tuple(first.get("loc", ())))
        # A union field fails once per branch: say all the branches in one sentence.
        same = [e for e in errors if _loc_to_param(tuple(e.get("loc", ()))) == param]
        message, code = _validation_message(first)
        if len(same) > 1:
            alternatives = " or ".join(dict.fromkeys(e.get("msg", "").removeprefix("Value error, ") for e in same))
            got = first.get("input")
            message = f"`{param}`: {alternatives}" + (f"; got {got!r}" if not isinstance(got, dict | list) else "")
        rest = len(errors) - len(same)
        if rest > 0:
            message += f" (and {rest} more problem{'s' if rest > 1 else ''})"
        if unstorable:
            return _shape(400, message, type="invalid_request_error", param=param, code=first["type"])
        return _shape(422, message, type="invalid_request_error", param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = "no such route; see /docs for the API" if status == 404 else str(exc.detail)
        return _shape(status, message, type=_HTTP_TYPES.get(status, "invalid_request_error"), param=None,
                      code={404: "not_found", 405: "method_not_allowed"}.get(status))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _shape(500, "internal server error; the operators have the log", type="server_error", param=None,
                      code="internal_error")
