"""A test-owned TuneQueue for the fault-injection suite (tests/faults): its own queues and its own database
(its reconciler republishes every stranded job it finds, so on the run's shared database it would take the jobs
other tests left waiting), optionally its own redis-server or Postgres cluster on free ports, an API and any number
of workers as real processes that a test may SIGKILL, SIGTERM or restart.
Never touches the shared servers' processes."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from common import auth
from tests.support.servers import BIN, REPO, free_port
from tests.support.waiting import wait_until as _wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Short leases and fast maintenance so a scenario recovers in seconds, not minutes.
FAST = {
    "TUNEQUEUE_LEASE_SECONDS": "5",
    "TUNEQUEUE_HEARTBEAT_SECONDS": "1",
    "TUNEQUEUE_CANCEL_POLL_SECONDS": "0.5",
    "TUNEQUEUE_MAINTENANCE_SECONDS": "1",
    "TUNEQUEUE_RECONCILE_AFTER_SECONDS": "2",
    "TUNEQUEUE_SHUTDOWN_GRACE_SECONDS": "30",
}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Servers here restart on purpose, so a failing check counts as 'not yet'."""
    return _wait_until(predicate, timeout, what, interval, tolerate=(Exception,))


class OwnRedis:
    """redis-server on a free port, keeping nothing on disk (like the machine's)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tq-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis.Redis(port=self.port).ping(), 10, "redis-server to answer")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnPostgres:
    """A throwaway Postgres 15 cluster on a free port (initdb into a temp dir)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tq-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        user = ["-U", "postgres"]
        subprocess.run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", *user, "--no-sync"],
                       check=True, capture_output=True, **_as_postgres_user())
        self.log = self.dir / "pg.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/tunequeue"

    def _ctl(self, *args: str) -> None:
        subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", *args],
                       check=True, capture_output=True, **_as_postgres_user())

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def restart(self) -> None:
        self._ctl("-m", "fast", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "restart")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _as_postgres_user() -> dict[str, Any]:
    """initdb/pg_ctl refuse to run as root: run them as the `postgres` system user, who owns the temp dir."""
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return {"preexec_fn": demote}


class Cluster:
    """API + workers over the given database/Redis, each a real process in its own process group."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.log_dir = log_dir
        tag = secrets.token_hex(4)
        self.queue = f"tunequeue.faults.{tag}"
        self.database: str | None = None
        if "TUNEQUEUE_DATABASE_URL" not in env:
            env = {**env, "TUNEQUEUE_DATABASE_URL": self._own_database(tag)}
        self.env = {**os.environ, **FAST, "TUNEQUEUE_CELERY_QUEUE": self.queue,
                    "TUNEQUEUE_VALIDATE_QUEUE": f"{self.queue}.validate", **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _own_database(self, tag: str) -> str:
        """A migrated database beside the run's, dropped by close()."""
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from common.db_setup import upgrade_database
        from tests.support.environment import DATABASE_URL, admin_engine

        self.database = f"{make_url(DATABASE_URL).database}_faults_{tag}"
        admin = admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        url = make_url(DATABASE_URL).set(database=self.database).render_as_string(hide_password=False)
        upgrade_database(url)
        return url

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 — lives as long as the process
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        self._start("api", [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(self.port)])
        wait_until(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200, 30, "the API")

    def start_worker(self, name: str, queues: str | None = None) -> subprocess.Popen[bytes]:
        queues = queues or f"{self.queue},{self.queue}.validate"
        log_path = self.log_dir / f"{name}.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        proc = self._start(name, [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
                                  "-Q", queues, "--hostname", f"{name}-{self.queue}@%h"])
        wait_until(lambda: b"ready." in log_path.read_bytes()[start:], 60, f"worker {name}")
        return proc

    def signal(self, name: str, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, sig)

    def wait_exit(self, name: str, timeout: float) -> int:
        return self.procs[name].wait(timeout=timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(Exception):
            redis.Redis.from_url(self.env["TUNEQUEUE_REDIS_URL"]).delete(self.queue, f"{self.queue}.validate")
        if self.database is not None:
            from sqlalchemy import text

            from tests.support.environment import admin_engine

            admin = admin_engine()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            admin.dispose()


def training_children(job_id: str) -> list[int]:
    """PIDs of live `python -m worker.train …/<job_id>/…` processes."""
    out = subprocess.run(["pgrep", "-f", f"worker.train .*{job_id}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def tenant_key(database_url: str, roles: tuple[str, ...] = ("member",)) -> str:
    """A new tenant's member key, written straight into the cluster's database (and, given more `roles`, one key
    per role of the same tenant, joined by spaces: `key_member, key_admin = tenant_key(url, roles).split()`)."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            tenant = auth.create_tenant(session, f"faults-{secrets.token_hex(4)}")
            keys = [auth.create_key(session, tenant, role=role)[1] for role in roles]
            session.commit()
            return " ".join(keys)
    finally:
        engine.dispose()


def api(cluster: Cluster, key: str) -> httpx.Client:
    return httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
