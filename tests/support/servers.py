"""Real processes for end-to-end tests: free ports, starting and stopping uvicorn / Celery / the inference server
as subprocesses in their own process groups, waiting until they answer, and polling a job over the API."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from common.artifacts import ArtifactStore

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
    serve_token: str = ""
    store: ArtifactStore | None = None  # the store the stack's processes use (TUNEQUEUE_ARTIFACTS), when set

    def serve_headers(self, tenant_id: str | None = None) -> dict[str, str]:
        """What the API sends serve (common/serve_token.py): the token, and the tenant when given."""
        from common.serve_token import TENANT_HEADER

        return {"Authorization": f"Bearer {self.serve_token}", **({TENANT_HEADER: tenant_id} if tenant_id else {})}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))


def start_process(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    """`cmd` in the repository root, in its own process group, its output in `log_dir/<name>.log`."""
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 — lives as long as the process
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(service: LiveService, timeout: float = 60) -> None:
    """Until the API answers /healthz, the worker logged "ready." and the inference server listens."""
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
                serve_ok = httpx.get(f"{service.serve_url}/status", headers=service.serve_headers(),
                                     timeout=2).json().get("listening") is True
        if api_ok and worker_ok and (serve_ok or not service.serve_url):
            return
        time.sleep(0.3)
    raise RuntimeError(f"service not ready in {timeout}s:\n{service.logs()}")


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], service: LiveService, timeout: float = 300,
             seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The job once its status is one of `statuses` (every polled view appended to `seen`)."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {statuses}; last: {job}\n{service.logs()}")


@contextlib.contextmanager
def live_stack(name: str, log_dir: Path, extra_env: dict[str, str] | None = None, *,
               ready_timeout: float = 60) -> Iterator[LiveService]:
    """The API, one Celery worker on a training and a validation queue of its own, and the inference server, as
    subprocesses on free ports over the real Postgres/Redis; stopped, and their queues dropped, on exit."""
    port, serve_port = free_port(), free_port()
    queue = f"tunequeue.{name}.{secrets.token_hex(4)}"
    serve_token = secrets.token_hex(32)
    env = {**os.environ, "TUNEQUEUE_CELERY_QUEUE": queue, "TUNEQUEUE_VALIDATE_QUEUE": f"{queue}.validate",
           "TUNEQUEUE_PORT": str(port), "TUNEQUEUE_SERVE_HOST": "127.0.0.1", "TUNEQUEUE_SERVE_PORT": str(serve_port),
           "TUNEQUEUE_SERVE_URL": f"http://127.0.0.1:{serve_port}", "TUNEQUEUE_SERVE_TOKEN": serve_token,
           # Stacks of one test session share the database but not their queues: a stack's reconciler would find
           # another stack's waiting job missing from its own broker queue and publish it there, to a worker with
           # other base models (seen in CI: a quality job failed by the e2e worker). The reconciler has its own
           # tests (tests/worker/test_maintenance.py, tests/faults).
           "TUNEQUEUE_RECONCILE_AFTER_SECONDS": "86400", **(extra_env or {})}
    uvicorn = [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    celery = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO", "--concurrency", "1",
              "-Q", f"{queue},{queue}.validate", "--hostname", f"{name}-{queue}@%h"]
    procs = {
        "api": start_process("api", uvicorn, env, log_dir),
        "worker": start_process("worker", celery, env, log_dir),
        "serve": start_process("serve", [sys.executable, "-m", "worker.serve"], env, log_dir),
    }
    service = LiveService(url=f"http://127.0.0.1:{port}", queue=queue, log_dir=log_dir, procs=procs,
                          serve_url=f"http://127.0.0.1:{serve_port}", serve_token=serve_token)
    try:
        wait_ready(service, timeout=ready_timeout)
        yield service
    finally:
        for proc in procs.values():
            stop_process(proc)
        from common.redis_client import get_redis

        get_redis().delete(queue, f"{queue}.validate")


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, *, timeout: float = 10) -> Iterator[str]:
    """An ASGI app served by a real uvicorn in a daemon thread of this process (streams need a real server: the
    test client buffers whole responses); yields its base URL and stops it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
