"""The API alone, started with its production command, and what a load test counts afterwards.

`production_api_command` reads the command that production runs (the CMD of deploy/api.Dockerfile, which
docker-compose.yml's `api` service uses) and points it at a loopback port, so that a test or a benchmark measures
the API the way it is deployed (workers, pool settings and all) instead of a command of its own.
`broker_job_ids` reads the job ids of the Celery messages waiting on a Redis queue (the broker is a doorbell: a
message holds one job id), for counting lost or doubled enqueues."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import BIN, REPO, free_port, start_process, stop_process

DOCKERFILE = REPO / "deploy" / "api.Dockerfile"


def production_api_command(port: int, host: str = "127.0.0.1", env: Mapping[str, str] | None = None) -> list[str]:
    """deploy/api.Dockerfile's CMD (exec or shell form; $VARS expanded from `env`) with its listen address set to
    host:port (`--host`/`--port`, or `--bind` for gunicorn) and its program taken from this virtualenv."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    cmd_lines = [line for line in lines if line.startswith("CMD ")]
    if not cmd_lines:
        raise RuntimeError(f"{DOCKERFILE} has no CMD: the API's production command is unknown")
    raw = cmd_lines[-1].removeprefix("CMD ").strip()
    argv: list[str] = json.loads(raw) if raw.startswith("[") else shlex.split(raw)
    values = dict(env if env is not None else os.environ)
    argv = [_expand(arg, values) for arg in argv]
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if name in ("--host", "--port", "--bind", "-b"):
            skip = not eq and i + 1 < len(argv)
            continue
        out.append(arg)
    program = BIN / out[0]
    if program.exists():
        out[0] = str(program)
    if Path(out[0]).name.startswith("gunicorn"):
        return [*out, "--bind", f"{host}:{port}"]
    return [*out, "--host", host, "--port", str(port)]


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def _expand(arg: str, env: Mapping[str, str]) -> str:
    """$NAME, ${NAME} and ${NAME:-default} as a shell expands them (unset and no default: empty)."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        return env.get(name) or (m.group(2) or "")
    return _VAR.sub(one, arg)


@contextlib.contextmanager
def production_api(log_dir: Path, extra_env: Mapping[str, str] | None = None, *,
                   ready_timeout: float = 60) -> Iterator[tuple[str, list[str]]]:
    """The API as a subprocess with its production command on a free loopback port, over the environment's
    Postgres/Redis (plus `extra_env`); yields (base URL, the command) once /healthz answers; stopped on exit."""
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    cmd = production_api_command(port, env=env)
    proc = start_process("api", cmd, env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}:\n{api_log(log_dir)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not answer /healthz in {ready_timeout}s:\n{api_log(log_dir)}")
            time.sleep(0.2)
        yield url, cmd
    finally:
        stop_process(proc)


def api_log(log_dir: Path, tail: int = 4000) -> str:
    """The end of the API's log without its access lines (uvicorn's workers starting and dying, tracebacks)."""
    path = log_dir / "api.log"
    if not path.exists():
        return "(no api.log)"
    lines = [line for line in path.read_text(errors="replace").splitlines() if 'HTTP/1.1" ' not in line]
    return "\n".join(lines)[-tail:]


def broker_job_ids(redis: Any, queue: str) -> list[str]:
    """The job id of every Celery message waiting on `queue` (kombu's Redis transport keeps one list per queue and
    priority step, `<queue>` and `<queue>\\x06\\x16<n>`), in no particular order, duplicates kept."""
    keys = [queue, *(k.decode() if isinstance(k, bytes) else k for k in redis.scan_iter(match=f"{queue}\x06\x16*"))]
    ids: list[str] = []
    for key in keys:
        for raw in redis.lrange(key, 0, -1):
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            ids.append(str(args[0]))
    return ids
