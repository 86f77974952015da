"""One error hierarchy, rooted at `TuneQueueError`: every error carries a `code` a program can act on, a
`message` that says how to fix it, and the `param` (request or spec field) it concerns.

An HTTP error also knows its status and renders as OpenAI's error body (`error_body`, the only place that
shape is built). A `JobFailure` is what a job fails with; it is recorded on the job as `job_error()`."""

from __future__ import annotations

from typing import Any


def error_body(message: str, *, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class TuneQueueError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def job_error(self) -> dict[str, Any]:
        """The error object a failed job records: {"code", "message", "param"}."""
        return {"code": self.code, "message": self.message, "param": self.param}


class JobFailure(TuneQueueError):
    """A job cannot run (its files, its base model, its training): the job fails with `job_error()`."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class InvalidRequest(TuneQueueError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class SchemaError(InvalidRequest):
    status_code = 422
    code = "invalid_schema"


class AuthenticationError(TuneQueueError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(TuneQueueError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(TuneQueueError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(TuneQueueError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class QuotaExceeded(TuneQueueError):
    """Over a quota a platform operator set on the tenant (common/services/quotas.py): 429, no Retry-After (time
    alone frees nothing; the message says what does)."""

    status_code = 429
    type = "rate_limit_error"
    code = "quota_exceeded"


class TooLarge(TuneQueueError):
    status_code = 413
    type = "invalid_request_error"
    code = "file_too_large"


class NotReady(TuneQueueError):
    status_code = 503
    type = "server_error"
    code = "not_ready"


class Overloaded(NotReady):
    """The service is saturated right now: answered at once with `Retry-After` instead of hanging."""

    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


def model_not_found(model_id: str, reason: str | None = None) -> NotFound:
    """404 model_not_found on `model`: the same answer whether the model never existed, was deleted or belongs to
    another tenant (never 403). `reason` adds what only the server can know (e.g. a missing base model)."""
    message = f"The model {model_id!r} does not exist or you do not have access to it."
    return NotFound(f"{message} {reason}" if reason else message, param="model", code="model_not_found")


class RateLimited(TuneQueueError):
    """A caller over one of its limits (requests per key, open streams, generations per tenant): 429 with
    `Retry-After`."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
