"""Forwarding a request to an OpenAI-compatible server and relaying its answer: a stream byte for byte as it
arrives, anything else as JSON with the upstream's status. The API forwards to `serve` (api/routes/inference.py)
and `serve` to vLLM (worker/serve/vllm.py) through it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from common.errors import NotReady, error_body

TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The upstream's headers the client hears too: when to come back (429, 503), and which of serve's engines answered.
RELAYED_HEADERS = ("retry-after", "x-tunequeue-engine")


class StreamingProxy:
    """One upstream server. Its errors say `name` and carry the codes `<code_prefix>_unavailable` (not reachable)
    and `<code_prefix>_error` (an answer that is not JSON); `hint` ends the unreachable message."""

    def __init__(self, url: str, *, name: str, code_prefix: str, hint: str = "") -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.code_prefix = code_prefix
        self.hint = hint
        self._client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def client(self) -> httpx.AsyncClient:
        """One pooled client per event loop (an app can outlive a test client's loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            self._client = (loop, httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=64)))
        return self._client[1]

    def _unreachable(self, exc: httpx.HTTPError) -> NotReady:
        hint = f"; {self.hint}" if self.hint else ""
        return NotReady(f"{self.name} is not reachable at {self.url}: {type(exc).__name__}{hint}",
                        code=f"{self.code_prefix}_unavailable")

    async def post(self, path: str, body: dict[str, Any],
                   headers: Mapping[str, str] | None = None) -> httpx.Response:
        """A plain POST whose answer the caller reads (no relaying)."""
        try:
            return await self.client().post(self.url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    async def forward(self, path: str, body: dict[str, Any], *, stream: bool,
                      headers: Mapping[str, str] | None = None) -> Response:
        """POST `body` (and `headers`: the upstream's credentials) to `path`; a 200 stream is relayed as
        Server-Sent Events while it is made."""
        client = self.client()
        request = client.build_request("POST", self.url + path, json=body, headers=headers)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        relayed = {name: response.headers[name] for name in RELAYED_HEADERS if name in response.headers}
        if response.status_code == 200 and stream:
            return StreamingResponse(_relay(response), media_type="text/event-stream",
                                     background=BackgroundTask(response.aclose), headers=STREAM_HEADERS | relayed)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        try:
            data = json.loads(content)
        except ValueError:
            raise NotReady(f"{self.name} answered {response.status_code} without JSON",
                           code=f"{self.code_prefix}_error") from None
        if response.status_code != 200 and isinstance(data, dict) and "error" not in data:
            # Older vLLM: {"object": "error", "message", "type", "param", "code"}; ours is OpenAI's.
            data = error_body(data.get("message", str(data)), type=data.get("type") or "server_error",
                              param=data.get("param"), code=str(data.get("code", response.status_code)))
        return JSONResponse(status_code=response.status_code, content=data, headers=relayed or None)


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk
