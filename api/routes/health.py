"""Liveness (`/healthz`) and readiness (`/readyz`: Postgres, Redis and the artifact store, each "ok" or "error")."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import DbSlot, StoreDep
from common.db import session_scope
from common.redis_client import get_redis

log = logging.getLogger("tunequeue.api")
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(_: DbSlot, store: StoreDep) -> JSONResponse:
    checks: dict[str, str] = {}

    def postgres() -> None:
        with session_scope() as session:
            session.execute(text("SELECT 1"))

    for name, probe in (
        ("postgres", postgres),
        ("redis", lambda: get_redis().ping()),
        ("artifacts", store.check),
    ):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            # The driver's text names the database host, port and role: the log gets it (one line, as a probe may
            # ask every few seconds), the body only "error" (/readyz answers anyone who reaches the API).
            log.warning("readyz: %s is not answering: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "error"
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return JSONResponse(status_code=503, content={
        "error": {"message": f"not ready: {failing} not answering", "type": "server_error", "param": None,
                  "code": "not_ready"},
        "checks": checks,
    })
