"""The upload size limit (TUNEQUEUE_MAX_UPLOAD_BYTES), enforced on the bytes as they arrive.

A declared Content-Length over the limit is refused before a byte of the body is read. A body without one
(`Transfer-Encoding: chunked`) or that lies about it is counted as `receive` hands it over: once the count passes
the limit plus `MULTIPART_OVERHEAD` the app's next read fails, whatever it had parsed is dropped (the
multipart parser closes its spooled parts; `create_file` has not run, so the artifact store holds nothing), and
the client gets `413 file_too_large` without the rest being read. Before this, a chunked upload was read to its
end (64 MiB with a 1 MiB limit) before `create_file` refused it.

Pure ASGI: a BaseHTTPMiddleware would cost every request a task and a stream."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import http_errors
from common.errors import TooLarge
from common.settings import get_settings

UPLOAD_PATHS = ("/files", "/v1/files")
MULTIPART_OVERHEAD = 64 * 1024  # the form's boundaries, part headers and its small fields (purpose, format)


class UploadTooLarge(Exception):
    """Raised into the app by `receive` once the body is over the limit; the middleware answers 413 itself."""


@dataclass
class _Body:
    allowed: int
    received: int = 0
    refused: bool = False


def too_large(size: str, limit: int) -> TooLarge:
    return TooLarge(f"the upload is {size}; this server accepts at most {limit} bytes (TUNEQUEUE_MAX_UPLOAD_BYTES): "
                    "split the file, compress it (.jsonl.gz), or ask an admin to raise the limit", param="file")


class LimitUploadSize:
    """413 `file_too_large` for an upload over TUNEQUEUE_MAX_UPLOAD_BYTES: at once when its Content-Length says so,
    else as soon as the bytes received pass it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_upload_bytes
        body = _Body(allowed=limit + MULTIPART_OVERHEAD)
        declared = Headers(scope=scope).get("content-length")
        if declared and declared.isdigit() and int(declared) > body.allowed:
            await http_errors.error_response(too_large(f"{declared} bytes", limit))(scope, receive, send)
            return

        async def counted() -> Message:
            if body.refused:  # a part of the app that reads on after the refusal hears that the client left
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                if body.received > body.allowed:
                    body.refused = True
                    raise UploadTooLarge
            return message

        async def unless_refused(message: Message) -> None:
            if not body.refused:  # whatever the app answers to the failed read (400, 500) is replaced by our 413
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except UploadTooLarge:
            pass
        except Exception:
            if not body.refused:
                raise
        if body.refused:
            response = http_errors.error_response(too_large(f"over {body.allowed} bytes", limit))
            response.headers["Connection"] = "close"  # the rest of the body is never read
            await response(scope, receive, send)
