"""The body of a generation request is bounded before it is parsed (TUNEQUEUE_MAX_INFERENCE_BODY_BYTES,
common/body_limit.py): serve reads at most that many bytes of it, counted as they arrive, and answers
`413 request_too_large` at once, without reading the rest. The API refuses the same bodies first; this is serve's
own guard, as for the token (worker/serve/guard.py)."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from common import http_errors
from common.body_limit import read_body, replay
from common.errors import TooLarge


class LimitBody:
    """Pure ASGI, inside `RequireServeToken`: a caller without the token is refused before a byte is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.limit)
        except ClientDisconnect:
            return
        except TooLarge as exc:
            response = http_errors.error_response(exc)
            response.headers["Connection"] = "close"  # the rest of the body is never read
            await response(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)
