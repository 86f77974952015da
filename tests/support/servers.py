"""Real processes for end-to-end tests: free ports, starting and stopping uvicorn / Celery / the inference server
as subprocesses in their own process groups, waiting until they answer, and polling a job over the API."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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
                serve_ok = httpx.get(f"{service.serve_url}/status", timeout=2).json().get("listening") is True
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
