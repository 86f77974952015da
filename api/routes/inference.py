"""OpenAI-compatible inference: POST /v1/chat/completions and /v1/completions.

The API authenticates, validates the parameters (422 for types and ranges, 400 for what this server does not
offer), checks that the tenant may use the model (404 model_not_found otherwise), and forwards the request to
`serve` (TUNEQUEUE_SERVE_URL), relaying its answer — a stream byte for byte, as tokens are made."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from api.deps import CurrentCaller, SessionDep, SettingsDep
from common.errors import NotReady
from common.schemas.inference import ChatCompletionRequest, CompletionRequest
from common.services.models import check_usable
from common.settings import Settings

router = APIRouter(prefix="/v1", tags=["inference"])

SERVE_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0)


def _client(request: Request) -> httpx.AsyncClient:
    """One pooled client per event loop (the app's state outlives a test client's loop)."""
    loop = asyncio.get_running_loop()
    cached = getattr(request.app.state, "serve_client", None)
    if cached is None or cached[0] is not loop:
        client = httpx.AsyncClient(timeout=SERVE_TIMEOUT, limits=httpx.Limits(max_connections=None,
                                                                                max_keepalive_connections=64))
        request.app.state.serve_client = (loop, client)
        return client
    return cached[1]  # type: ignore[no-any-return]


async def _authorize(session: Any, settings: Settings, tenant_id: str, model: str) -> None:
    def check() -> None:
        try:
            check_usable(session, settings, tenant_id, model)
        finally:
            # Release the connection now: the request-scoped session would otherwise hold one for the whole
            # stream, and a few dozen streams would exhaust the pool.
            session.commit()
            session.close()

    await run_in_threadpool(check)


async def _forward(request: Request, path: str, body: ChatCompletionRequest | CompletionRequest,
                   settings: Settings) -> Response:
    client = _client(request)
    payload = body.model_dump(mode="json", exclude_unset=True)
    upstream = client.build_request("POST", settings.serve_url.rstrip("/") + path, json=payload)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        raise NotReady(f"the inference server is not reachable at {settings.serve_url} (TUNEQUEUE_SERVE_URL): "
                       f"{type(exc).__name__}; is `python -m worker.serve` running?", code="serve_unavailable") from exc
    if response.status_code != 200 or not body.stream:
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        try:
            data = json.loads(content)
        except ValueError:
            raise NotReady(f"the inference server answered {response.status_code} without JSON",
                           code="serve_error") from None
        return JSONResponse(status_code=response.status_code, content=data)

    async def relay() -> Any:
        async for chunk in response.aiter_raw():
            yield chunk

    return StreamingResponse(relay(), media_type="text/event-stream", background=BackgroundTask(response.aclose),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, caller: CurrentCaller,
                           session: SessionDep, settings: SettingsDep) -> Response:
    """Chat with a base model or one of your fine-tuned models (`model`: `ft:…` or a checkpoint id)."""
    body.check_supported()
    await _authorize(session, settings, caller.tenant_id, body.model)
    return await _forward(request, "/v1/chat/completions", body, settings)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, caller: CurrentCaller, session: SessionDep,
                      settings: SettingsDep) -> Response:
    """Plain-text completion of one or more prompts."""
    body.check_supported()
    await _authorize(session, settings, caller.tenant_id, body.model)
    return await _forward(request, "/v1/completions", body, settings)
