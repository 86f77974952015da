"""The FastAPI app factory: `uvicorn api.main:app`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from api import metrics
from api.routes import files, health, inference, jobs, models, openai_jobs, workers
from common import http_errors
from common.errors import TooLarge
from common.settings import get_settings

UPLOAD_PATHS = ("/files", "/v1/files")
MULTIPART_OVERHEAD = 64 * 1024


def create_app() -> FastAPI:
    app = FastAPI(
        title="TuneQueue",
        version="0.1.0",
        description="Self-hosted fine-tuning behind a durable job queue, with an OpenAI-compatible API.",
    )
    http_errors.install(app, logging.getLogger("tunequeue.api"))

    @app.middleware("http")
    async def refuse_oversized_uploads(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                                       ) -> Response:
        # Refuse before reading the body when the client declares a size over the limit.
        if request.method == "POST" and request.url.path in UPLOAD_PATHS:
            limit = get_settings().max_upload_bytes
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
                return http_errors.error_response(TooLarge(
                    f"the upload is {declared} bytes; this server accepts at most {limit} (TUNEQUEUE_MAX_UPLOAD_BYTES)",
                    param="file"))
        return await call_next(request)

    for router in (health.router, files.router, jobs.router, models.router, workers.router, metrics.router):
        app.include_router(router)
    # The OpenAI-compatible surface: the same routers under /v1, and OpenAI's own job-create body first.
    app.include_router(openai_jobs.router)
    app.include_router(inference.router)
    app.include_router(jobs.router, prefix="/v1/fine_tuning", include_in_schema=False)
    app.include_router(files.router, prefix="/v1", include_in_schema=False)
    app.add_middleware(metrics.HttpMetricsMiddleware)
    return app


app = create_app()
