"""common/proxy.py against a real upstream over HTTP: JSON answers keep their status, streams are relayed as
they come, old vLLM error bodies become OpenAI's, and an upstream that is down or answers without JSON is a
503 whose code names it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, StreamingResponse

from common.errors import NotReady
from common.proxy import StreamingProxy
from tests.support.servers import free_port, uvicorn_in_thread


def _upstream() -> FastAPI:
    app = FastAPI()

    @app.post("/ok")
    def ok(body: dict[str, Any]) -> Any:
        if body.get("stream"):
            return StreamingResponse(iter(["data: 1\n\n", "data: [DONE]\n\n"]), media_type="text/event-stream")
        return {"echo": body}

    @app.post("/engine")
    def engine(body: dict[str, Any]) -> Any:
        headers = {"x-tunequeue-engine": "builtin", "x-not-for-clients": "1"}
        if body.get("stream"):
            return StreamingResponse(iter(["data: [DONE]\n\n"]), media_type="text/event-stream", headers=headers)
        return JSONResponse({"ok": True}, headers=headers)

    @app.post("/old-error")
    def old_error() -> JSONResponse:
        return JSONResponse(status_code=400, content={"object": "error", "message": "bad", "type": "BadRequest",
                                                      "param": None, "code": 400})

    @app.post("/html")
    def html() -> Response:
        return Response("<html>oops</html>", status_code=502, media_type="text/html")

    return app


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with uvicorn_in_thread(_upstream()) as url:
        yield url


def _call(proxy: StreamingProxy, path: str, body: dict[str, Any], stream: bool = False) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        response = await proxy.forward(path, body, stream=stream)
        if isinstance(response, StreamingResponse):
            chunks = [c if isinstance(c, bytes) else str(c).encode() async for c in response.body_iterator]
            if response.background is not None:
                await response.background()
            return response.status_code, b"".join(chunks)
        return response.status_code, bytes(response.body)

    return asyncio.run(go())


def test_json_answers_and_streams_are_relayed(upstream_url: str) -> None:
    proxy = StreamingProxy(upstream_url, name="the test server", code_prefix="test")
    status, body = _call(proxy, "/ok", {"x": 1})
    assert status == 200 and json.loads(body) == {"echo": {"x": 1}}
    status, body = _call(proxy, "/ok", {"stream": True}, stream=True)
    assert status == 200 and body == b"data: 1\n\ndata: [DONE]\n\n"


def test_serves_engine_header_is_relayed_streamed_or_not_and_other_upstream_headers_are_not(
        upstream_url: str) -> None:
    proxy = StreamingProxy(upstream_url, name="the test server", code_prefix="test")

    async def headers(stream: bool) -> Any:
        response = await proxy.forward("/engine", {"stream": stream}, stream=stream)
        if isinstance(response, StreamingResponse) and response.background is not None:
            await response.background()
        return response.headers

    for stream in (False, True):
        relayed = asyncio.run(headers(stream))
        assert relayed["x-tunequeue-engine"] == "builtin"
        assert "x-not-for-clients" not in relayed


def test_an_old_vllm_error_becomes_the_openai_error_body(upstream_url: str) -> None:
    status, body = _call(StreamingProxy(upstream_url, name="vLLM", code_prefix="backend"), "/old-error", {})
    assert status == 400
    assert json.loads(body) == {"error": {"message": "bad", "type": "BadRequest", "param": None, "code": "400"}}


def test_an_answer_without_json_is_503_with_the_upstreams_code(upstream_url: str) -> None:
    with pytest.raises(NotReady) as caught:
        _call(StreamingProxy(upstream_url, name="the test server", code_prefix="test"), "/html", {})
    assert caught.value.code == "test_error" and "502" in caught.value.message


def test_an_unreachable_upstream_is_503_naming_it() -> None:
    proxy = StreamingProxy(f"http://127.0.0.1:{free_port()}", name="the test server (TEST_URL)", code_prefix="test",
                           hint="is it running?")
    with pytest.raises(NotReady) as caught:
        _call(proxy, "/ok", {})
    assert caught.value.code == "test_unavailable"
    assert "the test server (TEST_URL)" in caught.value.message and caught.value.message.endswith("is it running?")
