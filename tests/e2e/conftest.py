"""The live service: uvicorn, a Celery worker and the inference server (`python -m worker.serve`) as subprocesses,
on their own queue and ports, over the real Postgres/Redis (tests/support/servers.py starts and stops them)."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import BIN, LiveService, free_port, start_process, stop_process, wait_ready


@pytest.fixture(scope="session")
def live_service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    log_dir = tmp_path_factory.mktemp("service-logs")
    port, serve_port = free_port(), free_port()
    queue = f"tunequeue.e2e.{secrets.token_hex(4)}"
    env = {**os.environ, "TUNEQUEUE_CELERY_QUEUE": queue, "TUNEQUEUE_VALIDATE_QUEUE": f"{queue}.validate",
           "TUNEQUEUE_PORT": str(port), "TUNEQUEUE_SERVE_HOST": "127.0.0.1", "TUNEQUEUE_SERVE_PORT": str(serve_port),
           "TUNEQUEUE_SERVE_URL": f"http://127.0.0.1:{serve_port}"}
    uvicorn = [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    celery = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO", "--concurrency", "1",
              "-Q", f"{queue},{queue}.validate", "--hostname", f"test-{queue}@%h"]
    procs = {
        "api": start_process("api", uvicorn, env, log_dir),
        "worker": start_process("worker", celery, env, log_dir),
        "serve": start_process("serve", [sys.executable, "-m", "worker.serve"], env, log_dir),
    }
    service = LiveService(url=f"http://127.0.0.1:{port}", queue=queue, log_dir=log_dir, procs=procs,
                          serve_url=f"http://127.0.0.1:{serve_port}")
    try:
        wait_ready(service)
        yield service
    finally:
        for proc in procs.values():
            stop_process(proc)
        from common.redis_client import get_redis

        get_redis().delete(queue, f"{queue}.validate")

