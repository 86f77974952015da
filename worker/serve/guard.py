"""Who may talk to serve: only the API, proven by the shared token (common/serve_token.py), for a named tenant.

`RequireServeToken` wraps the whole app, so that nothing — generation, /status, the OpenAPI schema, an unknown
path — answers without the token; only /healthz (liveness, nothing else) stays open for probes. The token is
compared in constant time. `tenant_of` reads the tenant the API vouches for; generation runs only on what that
tenant may use (worker/serve/catalog.py `for_tenant`)."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import AuthenticationError, InvalidRequest
from common.http_errors import error_response
from common.serve_token import TENANT_HEADER

OPEN_PATHS = frozenset({"/healthz"})


class RequireServeToken:
    """Pure ASGI: a refused request costs no task and reads no body."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._allowed(scope):
            await error_response(AuthenticationError(
                "This is TuneQueue's internal inference server: it answers only the TuneQueue API, which sends "
                "`Authorization: Bearer <TUNEQUEUE_SERVE_TOKEN>`. Send requests to the API's /v1/chat/completions "
                "with your API key.", code="invalid_serve_token"))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)


def tenant_of(request: Request) -> str:
    """The tenant the API forwards for. Without one a request is refused: it carries the token, so it is the API
    (or holds its secret), but nothing would say whose models it may run — a bad request, not bad credentials."""
    tenant = request.headers.get(TENANT_HEADER, "").strip()
    if not tenant:
        raise InvalidRequest(f"the `{TENANT_HEADER}` header is required: the tenant this request is made for "
                             "(the API sends it with every request it forwards)", param=TENANT_HEADER,
                             code="missing_tenant")
    return tenant
