"""The serve process's HTTP app: OpenAI-compatible /v1/chat/completions and /v1/completions, for the API only.

It listens on an internal address only (TUNEQUEUE_SERVE_HOST/PORT); the public API authenticates, checks the
tenant's right to the model and forwards here with the shared serve token and the tenant. Serve refuses every
request without the token (worker/serve/guard.py) and checks the tenant's right to the model again.

What one tenant sends cannot starve another: a body over TUNEQUEUE_MAX_INFERENCE_BODY_BYTES is a 413 before it is
parsed (worker/serve/limits.py), a prompt longer than the context could hold is a 400 before it is tokenised, and
tokenising runs off the event loop (worker/serve/tokenise.py); a tenant has at most
TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES sequences in flight (429 with Retry-After beyond) and the engine admits
tenants in turn (worker/serve/fairness.py).

Streams are Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; the response starts once the
first tokens exist, so that errors found before that (a deleted adapter, one that does not fit its base) still get
a proper status.

Under the vLLM backend a request goes to vLLM unless its adapter is one vLLM cannot run and the built-in engine
can (worker/serve/vllm.py `engine_for`); every answer names the engine that made it in `x-tunequeue-engine`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from common import http_errors
from common.errors import InvalidRequest, TuneQueueError
from common.ids import new_id
from common.schemas.inference import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseBuilder,
    sse,
)
from common.serve_token import serve_token
from common.settings import Settings, get_settings
from worker.serve.catalog import Target
from worker.serve.engine import Event, GenRequest, Sampling
from worker.serve.guard import RequireServeToken, tenant_of
from worker.serve.limits import LimitBody
from worker.serve.server import ModelServer
from worker.serve.vllm import ENGINE_HEADER, EngineName

DISCONNECT_POLL_SECONDS = 1.0


def create_app(settings: Settings | None = None, server: ModelServer | None = None) -> FastAPI:
    """`server` given (tests): it is started without its Redis listener. Raises ServeTokenError in production
    without TUNEQUEUE_SERVE_TOKEN."""
    settings = settings or get_settings()
    token = serve_token(settings)
    listen = server is None
    model_server = server or ModelServer(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        model_server.start(listen=listen)
        yield
        await asyncio.to_thread(model_server.close)

    app = FastAPI(title="TuneQueue serve", version="0.1.0", lifespan=lifespan,
                  description="Internal inference server; reach it through the API, which authenticates.")
    app.state.server = model_server
    http_errors.install(app, logging.getLogger("tunequeue.serve"))
    app.add_middleware(LimitBody, limit=settings.max_inference_body_bytes)
    app.add_middleware(RequireServeToken, token=token)  # outermost: no token, no byte of the body read

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness for probes, open to all: it says nothing else."""
        return {"status": "ok"}

    @app.get("/status")
    def status() -> dict[str, Any]:
        """What is loaded: base models, their adapters (most recently used last; every tenant's: token only),
        queue depths, tokenisations (run, refused by length, running now) and the sequences tenants hold. Under the
        vLLM backend, `vllm`: the adapters loaded into vLLM and those the built-in engine answers in its place."""
        pool = model_server.pool
        vllm = model_server.vllm
        routing = {} if vllm is None else {"vllm": {"adapters": list(vllm.loaded), "builtin_adapters": sorted(
            model_id for model_id, engine in list(vllm.engines.items()) if engine == "builtin")}}
        return {"backend": settings.serve_backend, **routing, "device": str(pool.device), "dtype": str(pool.dtype),
                "listening": bool(model_server.listener and model_server.listener.ready.is_set()),
                "bases": {name: {**base.engine.stats(), "mib": base.nbytes // 2**20}
                          for name, base in list(pool.loaded.items())},
                "tokenising": model_server.tokeniser.stats(), "tenant_sequences": model_server.slots.stats()}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await _generate(model_server, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await _generate(model_server, body, request)

    return app


def _token_limit(body: ChatCompletionRequest | CompletionRequest, prompts: list[list[int]], context: int,
                 default: int) -> int:
    longest = max(len(p) for p in prompts)
    where = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    limit = body.token_limit
    if longest >= context or (limit is not None and longest + limit > context):
        asked = f"{longest + limit} tokens ({longest} in the {where}, {limit} in the completion)" if limit else \
            f"{longest} tokens in the {where}"
        raise InvalidRequest(f"This model's maximum context length is {context} tokens. However, you requested "
                             f"{asked}. Please reduce the length of the {where} or completion.",
                             param=where if limit is None or longest >= context else "max_tokens",
                             code="context_length_exceeded")
    return limit if limit is not None else min(default, context - longest)


async def _generate(server: ModelServer, body: ChatCompletionRequest | CompletionRequest,
                    request: Request) -> Response:
    tenant_id = tenant_of(request)
    body.check_supported()
    target = await asyncio.to_thread(server.catalog.for_tenant, body.model, tenant_id)
    engine: EngineName = "builtin" if server.vllm is None else await server.vllm.route(target)
    if server.vllm is not None and engine == "vllm":
        payload = {**body.model_dump(mode="json", exclude_unset=True), "model": await server.vllm.ensure(target)}
        response = await server.vllm.forward(request.url.path, payload, bool(body.stream))
    else:
        response = await _generate_builtin(server, body, request, target, tenant_id)
    response.headers[ENGINE_HEADER] = engine
    return response


async def _generate_builtin(server: ModelServer, body: ChatCompletionRequest | CompletionRequest, request: Request,
                            target: Target, tenant_id: str) -> Response:
    # The tenant's slots are taken before any work on the request, and handed to the engine with it.
    release = server.slots.acquire(tenant_id, body.choices * len(body.prompts)
                                   if isinstance(body, CompletionRequest) else body.choices)
    try:
        base = await asyncio.to_thread(server.pool.get, target.base_model)
        kind, prompts, echo = await server.tokeniser.encode(base, body)
        max_tokens = _token_limit(body, prompts, base.context_length, server.settings.serve_default_max_tokens)
        adapter = None
        if target.adapter_id is not None and target.adapter_id not in base.engine.bank:
            adapter = await asyncio.to_thread(server.load_adapter, target, base)
        sampling = Sampling(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p, stop=tuple(body.stop_list),
                            seed=body.seed)
        job = GenRequest(prompts, sampling, n=body.choices, adapter_id=target.adapter_id, adapter=adapter,
                         loop=asyncio.get_running_loop(), tenant=tenant_id, on_done=release)
        base.engine.submit(job)
    except BaseException:
        release()
        raise
    builder = ResponseBuilder(kind, body.model, new_id("chatcmpl" if kind == "chat" else "cmpl", 29))
    try:
        first = await _next_events(job, request)
    except BaseException:
        job.cancel()
        raise
    if body.stream:
        return StreamingResponse(_stream(job, first, builder, echo, body.include_usage, request),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        return JSONResponse(await _collect(job, first, builder, echo, request))
    finally:
        job.cancel()


async def _next_events(job: GenRequest, request: Request) -> list[Event]:
    """The next batch of events (all that are waiting); raises the request's error; cancels on disconnect."""
    while True:
        try:
            events = await asyncio.wait_for(job.queue.get(), timeout=DISCONNECT_POLL_SECONDS)
            break
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                raise asyncio.CancelledError from None
    while not job.queue.empty():
        events += job.queue.get_nowait()
    for event in events:
        if event.error is not None:
            raise event.error
    return events


async def _collect(job: GenRequest, events: list[Event], builder: ResponseBuilder, echo: list[str],
                   request: Request) -> dict[str, Any]:
    texts = [echo[i // job.n] if echo else "" for i in range(job.rows)]
    reasons: list[str | None] = [None] * job.rows
    tokens = [0] * job.rows
    while True:
        for event in events:
            texts[event.choice] += event.text
            tokens[event.choice] = event.completion_tokens
            if event.finish_reason is not None:
                reasons[event.choice] = event.finish_reason
        if all(r is not None for r in reasons):
            return builder.final(texts, reasons, job.prompt_tokens, sum(tokens))
        events = await _next_events(job, request)


async def _stream(job: GenRequest, events: list[Event], builder: ResponseBuilder, echo: list[str],
                  include_usage: bool, request: Request) -> AsyncIterator[bytes]:
    started: set[int] = set()
    finished: set[int] = set()
    tokens = [0] * job.rows
    try:
        while True:
            merged: dict[int, list[Any]] = {}  # choice → [text, finish_reason], in order of arrival
            for event in events:
                slot = merged.setdefault(event.choice, ["", None])
                slot[0] += event.text
                slot[1] = event.finish_reason or slot[1]
                tokens[event.choice] = event.completion_tokens
            out = []
            for choice, (text, reason) in merged.items():
                if choice not in started:
                    started.add(choice)
                    text = (echo[choice // job.n] if echo else "") + text
                    out.append(sse(builder.chunk(choice, text, first=True)))
                elif text:
                    out.append(sse(builder.chunk(choice, text)))
                if reason is not None:
                    finished.add(choice)
                    out.append(sse(builder.chunk(choice, None if builder.kind == "chat" else "", reason)))
            if out:
                yield b"".join(out)
            if len(finished) == job.rows:
                break
            try:
                events = await _next_events(job, request)
            except TuneQueueError as exc:
                yield sse(exc.to_body()) + SSE_DONE
                return
        if include_usage:
            yield sse(builder.usage_chunk(job.prompt_tokens, sum(tokens)))
        yield SSE_DONE
    finally:
        job.cancel()
