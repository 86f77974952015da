"""Real processes: uvicorn, a Celery worker and the inference server (`python -m worker.serve`) as subprocesses,
on their own queue and ports, over the real Postgres/Redis."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveService:
    url: str
    queue: str
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]]
    serve_url: str = ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))


def _start(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 — lives as long as the process
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def live_service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    log_dir = tmp_path_factory.mktemp("service-logs")
    port, serve_port = free_port(), free_port()
    queue = f"tunequeue.e2e.{secrets.token_hex(4)}"
    env = {**os.environ, "TUNEQUEUE_CELERY_QUEUE": queue, "TUNEQUEUE_VALIDATE_QUEUE": f"{queue}.validate",
           "TUNEQUEUE_PORT": str(port), "TUNEQUEUE_SERVE_HOST": "127.0.0.1", "TUNEQUEUE_SERVE_PORT": str(serve_port),
           "TUNEQUEUE_SERVE_URL": f"http://127.0.0.1:{serve_port}"}
    procs = {
        "api": _start("api", [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
                      env, log_dir),
        "worker": _start("worker", [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
                                    "--concurrency", "1", "-Q", f"{queue},{queue}.validate",
                                    "--hostname", f"test-{queue}@%h"], env, log_dir),
        "serve": _start("serve", [sys.executable, "-m", "worker.serve"], env, log_dir),
    }
    service = LiveService(url=f"http://127.0.0.1:{port}", queue=queue, log_dir=log_dir, procs=procs,
                          serve_url=f"http://127.0.0.1:{serve_port}")
    try:
        _wait_ready(service)
        yield service
    finally:
        for proc in procs.values():
            _stop(proc)
        from common.progress import get_redis

        get_redis().delete(queue, f"{queue}.validate")


def _wait_ready(service: LiveService, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    api_ok = worker_ok = serve_ok = False
    while time.monotonic() < deadline:
        for name, proc in service.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{service.logs()}")
        if not api_ok:
            with contextlib.suppress(httpx.HTTPError):
                api_ok = httpx.get(f"{service.url}/healthz", timeout=2).status_code == 200
        worker_ok = worker_ok or "ready." in (service.log_dir / "worker.log").read_text(errors="replace")
        if not serve_ok and service.serve_url:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                # Ready once it listens on tunequeue:models, so that no publication is missed.
                serve_ok = httpx.get(f"{service.serve_url}/status", timeout=2).json().get("listening") is True
        if api_ok and worker_ok and (serve_ok or not service.serve_url):
            return
        time.sleep(0.3)
    raise RuntimeError(f"service not ready in {timeout}s:\n{service.logs()}")
