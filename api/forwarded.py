"""What `python -m api.main --proxy-headers` serves behind the reverse proxy: uvicorn's ProxyHeadersMiddleware
(X-Forwarded-For and X-Forwarded-Proto, from the addresses in FORWARDED_ALLOW_IPS only) and, from those same
addresses only, X-Forwarded-Prefix as the ASGI `root_path`, so that the API works under a sub-path
(`https://gpu.example/tuneq/`): `/docs` loads `<prefix>/openapi.json`, and the schema's `servers` is the prefix.

The trust check must see the proxy's own address, which ProxyHeadersMiddleware replaces with the client's: so this
wraps it rather than sitting inside the app, and both use one list (uvicorn's parser of FORWARDED_ALLOW_IPS, which
takes addresses and CIDR networks). A prefix from anyone else, or one that is not a plain path, is ignored.

The proxy strips the prefix before it forwards (deploy/nginx.conf), and `scope["path"]` stays the path the API
routes on: only `root_path` carries the prefix (Starlette routes a path that does not start with its root path as
it is), so middleware that match on paths (the upload limit) see `/files` under any prefix."""

from __future__ import annotations

import os
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

# One or more path segments of unreserved URL characters: the prefix goes into the /docs page's HTML and the
# schema, so nothing that could end a string or start a tag, query or fragment gets in.
PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
MAX_PREFIX = 200


def trusted_proxies() -> str:
    """FORWARDED_ALLOW_IPS as uvicorn reads it (its default too: only a proxy on this host's loopback)."""
    return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def forwarded_prefix(headers: Headers) -> str | None:
    """The X-Forwarded-Prefix without its trailing slash, or None when absent, `/` or not a plain path."""
    value = headers.get("x-forwarded-prefix", "").strip().rstrip("/")
    if len(value) > MAX_PREFIX or not PREFIX.fullmatch(value) or {".", ".."} & set(value.split("/")):
        return None
    return value


class BehindProxy:
    """uvicorn's proxy headers, plus X-Forwarded-Prefix as `root_path`, from the trusted proxies only."""

    def __init__(self, app: ASGIApp, trusted: str) -> None:
        self.proxy_headers = ProxyHeadersMiddleware(app, trusted)  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and client[0] in self.proxy_headers.trusted_hosts:
            prefix = forwarded_prefix(Headers(scope=scope))
            if prefix:
                scope = {**scope, "root_path": scope.get("root_path", "").rstrip("/") + prefix}
        await self.proxy_headers(scope, receive, send)  # type: ignore[arg-type]
