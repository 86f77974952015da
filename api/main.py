"""The FastAPI app factory (`api.main:app`) and the production command:

    python -m api.main --host 0.0.0.0 --port 8000 --proxy-headers

which runs uvicorn with `--workers` from TUNEQUEUE_API_WORKERS (default: the CPU cores this process may use).
Each worker has its own connection pools and admission limit: docs/operations.md, "Database connections"."""

from __future__ import annotations

import argparse
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.pool import NullPool

from api import metrics
from api.forwarded import BehindProxy, trusted_proxies
from api.rate_limits import LimitRequestRate
from api.routes import (
    files,
    health,
    inference,
    jobs,
    keys,
    models,
    openai_jobs,
    openai_unsupported,
    quotas,
    ui,
    workers,
)
from api.routes.secrets import router as secrets_router
from api.routes.webhooks import router as webhooks_router
from api.upload_limits import LimitUploadSize
from common import http_errors
from common.read_pool import close_pool
from common.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # What start-up built (modules, the app, its routes and models) lives as long as the worker: frozen out of the
    # collector, a full collection no longer walks it. Measured: 95-120 ms pauses of every request in the worker,
    # a few times a minute at 40 req/s, down to 20-50 ms (docs/benchmarks.md, "Tenant isolation on the API").
    gc.collect()
    gc.freeze()
    yield
    await close_pool()  # this worker's asyncpg pool belongs to this event loop


log = logging.getLogger("tunequeue.api")


def create_app() -> FastAPI:
    app = FastAPI(
        lifespan=lifespan,
        title="TuneQueue",
        version="0.1.0",
        description="Self-hosted fine-tuning behind a durable job queue, with an OpenAI-compatible API.",
        # No trailing-slash redirects: Starlette builds their Location from the Host header, which the client
        # chooses (docs/security.md, "Behind the reverse proxy"). `/jobs/` is a 404.
        redirect_slashes=False,
    )
    http_errors.install(app, log)

    for router in (health.router, files.router, jobs.router, models.router, workers.router, keys.router,
                   quotas.router, metrics.router):
        app.include_router(router)
    app.include_router(webhooks_router)  # signed webhooks (docs/webhooks.md)
    app.include_router(secrets_router)  # tracker credentials (docs/trackers.md)
    # The OpenAI-compatible surface: the same routers under /v1, and OpenAI's own job-create body first.
    app.include_router(openai_jobs.router)
    app.include_router(openai_unsupported.router)  # its routes this server does not offer, by name
    app.include_router(inference.router)
    app.include_router(jobs.router, prefix="/v1/fine_tuning", include_in_schema=False)
    app.include_router(files.router, prefix="/v1", include_in_schema=False)
    app.include_router(ui.router)  # the dashboard, a client of the routes above (docs/ui.md)
    app.add_middleware(LimitUploadSize)
    app.add_middleware(LimitRequestRate)  # requests per key (api/rate_limits.py), before any body is read
    app.add_middleware(metrics.HttpMetricsMiddleware)
    return app


app = create_app()
# What `--proxy-headers` serves: X-Forwarded-For/-Proto/-Prefix from FORWARDED_ALLOW_IPS only (api/forwarded.py).
proxied_app = BehindProxy(app, trusted_proxies())


def api_workers(settings: Settings) -> int:
    """TUNEQUEUE_API_WORKERS, else the CPU cores this process may run on (a container's CPU set included)."""
    if settings.api_workers is not None:
        return settings.api_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def connections_per_worker(settings: Settings) -> int:
    """The most connections one API worker opens: two engines (asyncpg reads, psycopg writes), each at most
    db_pool_size + db_max_overflow (the admission limit keeps each at db_pool_size in practice)."""
    return 2 * (settings.db_pool_size + settings.db_max_overflow)


def check_connection_budget(settings: Settings, workers: int) -> None:
    """Warn (at start, once) when the API's workers alone could open more connections than Postgres accepts."""
    from sqlalchemy import create_engine, text

    wanted = workers * connections_per_worker(settings)
    try:
        engine = create_engine(settings.database_url, poolclass=NullPool, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            allowed = int(connection.execute(text("SHOW max_connections")).scalar_one())
        engine.dispose()
    except Exception as exc:  # Postgres not up yet: the workers will say so themselves
        log.info("could not read Postgres' max_connections (%s); skipping the connection budget check", exc)
        return
    if wanted > allowed:
        log.warning("%d API workers x %d connections each (2 x (TUNEQUEUE_DB_POOL_SIZE + TUNEQUEUE_DB_MAX_OVERFLOW)) "
                    "= %d, more than Postgres' max_connections = %d, before the Celery workers' own: lower "
                    "TUNEQUEUE_API_WORKERS or the pool sizes, or raise max_connections (docs/operations.md)",
                    workers, connections_per_worker(settings), wanted, allowed)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m api.main", description="Run the TuneQueue API under uvicorn.")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: TUNEQUEUE_API_WORKERS, else the CPU cores)")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-For, -Proto and -Prefix from $FORWARDED_ALLOW_IPS (uvicorn's flag, "
                             "plus the prefix)")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request on stdout")
    args = parser.parse_args(argv)
    workers = args.workers or api_workers(settings)
    check_connection_budget(settings, workers)
    uvicorn.run("api.main:proxied_app" if args.proxy_headers else "api.main:app", host=args.host, port=args.port,
                workers=workers, proxy_headers=False, access_log=not args.no_access_log)


if __name__ == "__main__":
    main()
