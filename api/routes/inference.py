"""OpenAI-compatible inference: POST /v1/chat/completions and /v1/completions.

The API authenticates, validates the parameters (422 for types and ranges, 400 for what this server does not
offer), checks that the tenant may use the model (404 model_not_found otherwise), and forwards the request to
`serve` (TUNEQUEUE_SERVE_URL) with the shared serve token and the tenant (common/serve_token.py), relaying its
answer — a stream byte for byte, as tokens are made. Serve checks the token and the tenant's right to the model
again: it trusts no one who merely reaches its port.

A body over TUNEQUEUE_MAX_INFERENCE_BODY_BYTES is a 413 before it is parsed, counted as it arrives
(`LimitedBodyRoute`, common/body_limit.py): an 8 MB message used to be parsed here and forwarded for serve to
tokenise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from api.admission import db_slot
from api.deps import CurrentCaller, SettingsDep
from common import http_errors
from common.body_limit import read_body, replay
from common.db import session_scope
from common.errors import TooLarge
from common.proxy import StreamingProxy
from common.schemas.inference import ChatCompletionRequest, CompletionRequest
from common.serve_token import auth_headers, serve_token
from common.services.models import check_usable
from common.settings import Settings, get_settings


@asynccontextmanager
async def _require_serve_token(_: FastAPI) -> AsyncIterator[None]:
    """In production the API refuses to start without TUNEQUEUE_SERVE_TOKEN (serve would refuse every request);
    elsewhere the development token is read (or made) at the first forwarded request."""
    if get_settings().environment == "production":
        serve_token(get_settings())
    yield


class LimitedBodyRoute(APIRoute):
    """Reads the body itself, at most TUNEQUEUE_MAX_INFERENCE_BODY_BYTES of it, before FastAPI parses it (FastAPI
    reads the whole body before any dependency runs, so a dependency could not stop it)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            try:
                body = await read_body(request.scope, request.receive, get_settings().max_inference_body_bytes)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is left to read it
            except TooLarge as exc:
                response = http_errors.error_response(exc)
                response.headers["Connection"] = "close"  # the rest of the body is never read
                return response
            return await handler(Request(request.scope, replay(body, request.receive)))

        return limited


router = APIRouter(prefix="/v1", tags=["inference"], lifespan=_require_serve_token, route_class=LimitedBodyRoute)


def _serve(request: Request, settings: Settings) -> StreamingProxy:
    """The app's one proxy to `serve` (its pooled connections), made anew if TUNEQUEUE_SERVE_URL changed."""
    proxy: StreamingProxy | None = getattr(request.app.state, "serve_proxy", None)
    if proxy is None or proxy.url != settings.serve_url.rstrip("/"):
        proxy = StreamingProxy(settings.serve_url, name="the inference server (TUNEQUEUE_SERVE_URL)",
                               code_prefix="serve", hint="is `python -m worker.serve` running?")
        request.app.state.serve_proxy = proxy
    return proxy


async def _authorize(settings: Settings, tenant_id: str, model: str) -> str:
    """404 unless the tenant may use `model`; the id serve knows it by (a checkpoint's name becomes its id)."""
    def check() -> str:
        # One unit of work in one thread-pool call: the connection is back in the pool before the (possibly long)
        # answer is forwarded, so streams never hold one.
        with session_scope() as session:
            return check_usable(session, settings, tenant_id, model)

    async with db_slot():
        return await run_in_threadpool(check)


async def _forward(request: Request, path: str, body: ChatCompletionRequest | CompletionRequest,
                   settings: Settings, tenant_id: str, model: str) -> Response:
    payload = body.model_dump(mode="json", exclude_unset=True)
    payload["model"] = model
    return await _serve(request, settings).forward(path, payload, stream=bool(body.stream),
                                                   headers=auth_headers(settings, tenant_id))


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, caller: CurrentCaller,
                           settings: SettingsDep) -> Response:
    """Chat with a base model or one of your fine-tuned models (`model`: `ft:…`, a checkpoint id or its
    `fine_tuned_model_checkpoint` name)."""
    body.check_supported()
    model = await _authorize(settings, caller.tenant_id, body.model)
    return await _forward(request, "/v1/chat/completions", body, settings, caller.tenant_id, model)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, caller: CurrentCaller,
                      settings: SettingsDep) -> Response:
    """Plain-text completion of one or more prompts."""
    body.check_supported()
    model = await _authorize(settings, caller.tenant_id, body.model)
    return await _forward(request, "/v1/completions", body, settings, caller.tenant_id, model)
