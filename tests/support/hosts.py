"""Worker "hosts" for the several-hosts test (tests/faults/test_two_hosts.py): each worker runs from a folder of its
own, its working directory, with its own work and model-cache folders (relative defaults such as var/ land there
too), so that nothing but the artifact store, Postgres and Redis is shared — as between two machines."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import Cluster, wait_until
from tests.support.servers import BIN


@dataclass
class Host:
    name: str
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def model_cache(self) -> Path:
        return self.root / "model-cache"

    def env(self) -> dict[str, str]:
        return {"TUNEQUEUE_WORK_DIR": str(self.work), "TUNEQUEUE_MODEL_CACHE_DIR": str(self.model_cache)}


def new_host(base: Path, name: str) -> Host:
    root = base / name
    root.mkdir(parents=True)
    return Host(name, root)


def start_workers_on(cluster: Cluster, hosts: list[Host]) -> None:
    """A Celery worker of `cluster` (both its queues) on each host, started in the host's folder with its
    settings; returns once every one is ready."""
    logs = []
    for host in hosts:
        log_path = cluster.log_dir / f"{host.name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 — lives as long as the process
        cluster.procs[host.name] = subprocess.Popen(
            [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
             "-Q", f"{cluster.queue},{cluster.queue}.validate", "--hostname", f"{host.name}-{cluster.queue}@%h"],
            cwd=host.root, env={**cluster.env, **host.env()}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        logs.append(log_path)
    wait_until(lambda: all(b"ready." in p.read_bytes() for p in logs), 90, "the workers")


def child_job_dir(pid: int) -> Path | None:
    """The job folder a training child (`python -m worker.train <job_dir>`) was started on."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return Path(args[args.index(b"worker.train") + 1].decode()) if b"worker.train" in args else None
