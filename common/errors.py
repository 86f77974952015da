"""One error hierarchy. Each error knows its HTTP status and renders as the OpenAI error shape:
{"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


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


class TooLarge(TuneQueueError):
    status_code = 413
    type = "invalid_request_error"
    code = "file_too_large"


class NotReady(TuneQueueError):
    status_code = 503
    type = "server_error"
    code = "not_ready"
