"""The FastAPI app factory: `uvicorn api.main:app`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from api import errors
from api.routes import files, health, jobs, models
from common.settings import get_settings

UPLOAD_PATHS = ("/files", "/v1/files")
MULTIPART_OVERHEAD = 64 * 1024


def create_app() -> FastAPI:
    app = FastAPI(
        title="TuneQueue",
        version="0.1.0",
        description="Self-hosted fine-tuning behind a durable job queue, with an OpenAI-compatible API.",
    )
    errors.install(app)

    @app.middleware("http")
    async def refuse_oversized_uploads(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                                       ) -> Response:
        # Refuse before reading the body when the client declares a size over the limit.
        if request.method == "POST" and request.url.path in UPLOAD_PATHS:
            limit = get_settings().max_upload_bytes
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
                return JSONResponse(status_code=413, content={"error": {
                    "message": f"the upload is {declared} bytes; this server accepts at most {limit} "
                               "(TUNEQUEUE_MAX_UPLOAD_BYTES)",
                    "type": "invalid_request_error", "param": "file", "code": "file_too_large"}})
        return await call_next(request)

    for router in (health.router, files.router, jobs.router, models.router):
        app.include_router(router)
    return app


app = create_app()
