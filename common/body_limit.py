"""A request body read whole, but never past a limit: the inference routes of the API (api/routes/inference.py)
and of serve (worker/serve/limits.py) both read their JSON bodies through `read_body`.

A declared Content-Length over the limit is refused before a byte is read; a body without one (`Transfer-Encoding:
chunked`), or one that lies about it, is counted as `receive` hands it over and refused as soon as the count
passes the limit, so a client never makes the server hold more than `limit` bytes of it. The body that passed is
handed to the app again by `replay` (JSON parsing needs it whole anyway). Before this, an 8 MB chat message was
read, parsed and tokenised before anything looked at its size."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope

from common.errors import TooLarge

SETTING = "TUNEQUEUE_MAX_INFERENCE_BODY_BYTES"


def too_large(size: str, limit: int) -> TooLarge:
    return TooLarge(f"the request body is {size}; this server accepts at most {limit} bytes per inference request "
                    f"({SETTING}): send a shorter prompt (no model's context holds that much text)",
                    param="body", code="request_too_large")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, or `TooLarge` once it is known to be over `limit` (from its Content-Length, or counted)."""
    declared = Headers(scope=scope).get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(f"{declared} bytes", limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise too_large(f"over {limit} bytes", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` first, then whatever the original says (a disconnect, later on)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
