"""The one error the client raises for an answer it did not want: the API's OpenAI-shaped error, as an exception."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: `status` (HTTP), and the error object's `type`, `code`, `param` and `message`."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"message": str(body)[:500]}
        self.status = status
        self.type: str | None = error.get("type")
        self.code: str | None = error.get("code")
        self.param: str | None = error.get("param")
        self.message: str = error.get("message") or f"HTTP {status}"
        super().__init__(f"{status} {self.code or self.type}: {self.message}"
                         + (f" (param: {self.param})" if self.param else ""))
