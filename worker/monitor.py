"""Monitoring in the worker parent: GPU sampling (NVML) and the worker's registration in Redis.

One `WorkerMonitor` per worker process. It samples every GPU the worker may use and keeps one registration
hash per GPU alive with a TTL (`tunequeue:worker:<host>:<gpu>`, `…:cpu-<pid>` without a GPU): host, card,
memory, utilization and the job it runs. While a job runs (`start_monitor`, called by the runner after
spawning the child) it samples every `gpu_sample_seconds`, merges the sample (`gpus`, `process_rss_mb`) into
the job's live progress in Redis, and every `DB_SAMPLE_SECONDS` into `jobs.last_progress` (fenced by attempt),
so the view survives a Redis flush even before the first training step. Idle, it refreshes the registration
every third of the TTL. Nothing here can fail a job: every error is logged and the next tick tries again.

A Celery worker starts its monitor at `worker_process_init` (sent by the solo pool too), so an idle worker is
visible, and removes its registration at `worker_shutdown`; a job run outside Celery (tests, `run_job` from a
shell) gets a monitor for the job's duration.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_process_init, worker_shutdown
from sqlalchemy import func, literal, update
from sqlalchemy.dialects.postgresql import JSONB

from common import state
from common.db import session_scope
from common.models import Job
from common.progress import ProgressChannel
from common.settings import Settings, get_settings
from common.worker_registry import WorkerRegistry
from worker.gpu import GpuSampler, host_memory_available_mb, process_tree_pids, process_tree_rss_mb

log = logging.getLogger("tunequeue.worker")

DB_SAMPLE_SECONDS = 30.0


@dataclass
class _JobRef:
    job_id: str
    tenant_id: str
    attempt: int
    child_pid: int
    started_at: float
    published: bool = False
    last_db_write: float = 0.0
    warned: bool = False


class WorkerMonitor:
    def __init__(self, settings: Settings, *, sampler: GpuSampler | None = None,
                 host: str | None = None) -> None:
        self.settings = settings
        self.sampler = sampler or GpuSampler()
        self._progress: ProgressChannel | None = None  # Redis clients, made on first use
        self._registry: WorkerRegistry | None = None
        self.host = host or socket.gethostname()
        self.worker = f"{self.host}:{os.getpid()}"
        self._job: _JobRef | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots: set[str] = set()
        self.latest: dict[str, Any] | None = None  # the last sample of the attached job

    @property
    def progress(self) -> ProgressChannel:
        if self._progress is None:
            self._progress = ProgressChannel()
        return self._progress

    @property
    def registry(self) -> WorkerRegistry:
        if self._registry is None:
            self._registry = WorkerRegistry()
        return self._registry

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> WorkerMonitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="worker-monitor")
            self._thread.start()
        return self

    def stop(self, *, unregister: bool = True) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if unregister:
            for slot in list(self._slots):
                try:
                    self.registry.unregister(self.host, slot)
                except Exception as exc:
                    log.debug("unregistering %s:%s failed: %s", self.host, slot, exc)
        self.sampler.close()

    def attach(self, job_id: str, tenant_id: str, attempt: int, child_pid: int) -> None:
        with self._lock:
            self._job = _JobRef(job_id, tenant_id, attempt, child_pid, time.time())
            self.latest = None
        self._wake.set()  # sample now: the registration shows the job at once

    def detach(self, job_id: str) -> None:
        with self._lock:
            if self._job is None or self._job.job_id != job_id:
                return
            self._job = None
            self.latest = None
        self._wake.set()

    def latest_for(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            if self._job is None or self._job.job_id != job_id:
                return None
            return self.latest

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.tick()
            with self._lock:
                busy = self._job is not None
            interval = self.settings.gpu_sample_seconds if busy else self.settings.worker_ttl_seconds / 3
            self._wake.wait(interval)
            self._wake.clear()

    # --- one sample ---------------------------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Sample, publish, register. Never raises."""
        with self._lock:
            job = self._job
        try:
            pids = process_tree_pids(job.child_pid) if job else set()
            gpus = self.sampler.sample(pids)
            sample: dict[str, Any] = {"gpus": gpus, "process_rss_mb": process_tree_rss_mb(job.child_pid)
                                      if job else None, "sampled_at": time.time()}
        except Exception:
            log.exception("sampling GPUs failed")
            sample = {"gpus": [], "process_rss_mb": None, "sampled_at": time.time()}
        if job is not None:
            with self._lock:
                if self._job is job:
                    self.latest = {k: sample[k] for k in ("gpus", "process_rss_mb", "sampled_at")}
            self._publish_job(job, sample)
        self._register(job, sample)
        return sample

    def _publish_job(self, job: _JobRef, sample: dict[str, Any]) -> None:
        fields = {"gpus": sample["gpus"], "process_rss_mb": sample["process_rss_mb"],
                  "sampled_at": sample["sampled_at"], "attempt": job.attempt}
        try:
            self.progress.publish_progress(job.job_id, fields, replace=not job.published)
            job.published = True
        except Exception as exc:
            log.warning("GPU sample for %s not published (Redis: %s)", job.job_id, exc)
        broken = [g for g in sample["gpus"] if g.get("error")]
        due = time.time() - job.last_db_write >= DB_SAMPLE_SECONDS
        if not due and not (broken and not job.warned):
            return
        try:
            with session_scope() as session:
                if due:
                    job.last_db_write = time.time()
                    merge_progress(session, job.job_id, job.attempt, fields)
                if broken and not job.warned:
                    job.warned = True
                    names = ", ".join(f"GPU {g['index']}: {g['error']}" for g in broken)
                    state.add_event(session, job.job_id, f"GPU metrics unavailable ({names}); training goes on",
                                    level="warning", owner_attempt=job.attempt)
        except Exception as exc:
            log.warning("GPU sample for %s not recorded (Postgres: %s)", job.job_id, exc)

    def _register(self, job: _JobRef | None, sample: dict[str, Any]) -> None:
        common: dict[str, Any] = {
            "host": self.host, "worker": self.worker, "pid": os.getpid(),
            "host_memory_available_mb": host_memory_available_mb(),
            "job_id": job.job_id if job else None, "tenant_id": job.tenant_id if job else None,
            "attempt": job.attempt if job else None, "job_started_at": job.started_at if job else None,
            "process_rss_mb": sample.get("process_rss_mb"), "updated_at": sample["sampled_at"],
        }
        entries = {str(g["index"]): {**common, "gpu": g} for g in sample["gpus"]}
        if not entries and not self.sampler.indices():
            entries = {f"cpu-{os.getpid()}": {**common, "gpu": None}}
        ttl = self.settings.worker_ttl_seconds
        for slot, fields in entries.items():
            try:
                self.registry.register(self.host, slot, fields, ttl)
                self._slots.add(slot)
            except Exception as exc:
                log.warning("worker registration %s:%s failed (Redis: %s)", self.host, slot, exc)


def merge_progress(session: Any, job_id: str, attempt: int, fields: dict[str, Any]) -> bool:
    """`jobs.last_progress || fields`, for the current owner only (the relay may write the rest meanwhile)."""
    patch = literal(fields, type_=JSONB)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
        .values(last_progress=func.coalesce(Job.last_progress, literal({}, type_=JSONB)).op("||")(patch))
    )
    return bool(result.rowcount)


# --- the process-wide monitor ----------------------------------------------------------------------------

_process_monitor: WorkerMonitor | None = None
_process_lock = threading.Lock()


def _install(settings: Settings) -> WorkerMonitor:
    global _process_monitor
    with _process_lock:
        if _process_monitor is None:
            _process_monitor = WorkerMonitor(settings).start()
        return _process_monitor


@worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """The process that runs tasks (the worker itself with the solo pool, each child with prefork) registers at
    once and stays visible while idle."""
    try:
        _install(get_settings())
    except Exception:
        log.exception("the worker monitor did not start; GPU metrics and registration are off")


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    """A worker that stops says so at once rather than lingering for a TTL."""
    global _process_monitor
    with _process_lock:
        monitor, _process_monitor = _process_monitor, None
    if monitor is not None:
        monitor.stop()


def latest_sample(job_id: str) -> dict[str, Any] | None:
    """The newest GPU/memory sample of a job this process runs (for the relay's durable copies)."""
    monitor = _process_monitor
    return monitor.latest_for(job_id) if monitor is not None else None


class JobMonitor:
    """The runner's handle: `stop()` when the child has exited."""

    def __init__(self, monitor: WorkerMonitor | None, job_id: str, owned: bool) -> None:
        self.monitor, self.job_id, self.owned = monitor, job_id, owned

    def stop(self) -> None:
        global _process_monitor
        if self.monitor is None:
            return
        try:
            self.monitor.detach(self.job_id)
            if self.owned:  # started for this job alone (no Celery pool process): leave nothing behind
                with _process_lock:
                    if _process_monitor is self.monitor:
                        _process_monitor = None
                self.monitor.stop()
        except Exception:
            log.exception("stopping the monitor of %s failed", self.job_id)


def start_monitor(job: Job, attempt: int, child_pid: int, settings: Settings) -> JobMonitor:
    """Watch the child `child_pid` of `attempt`; never raises (monitoring is never a reason to fail a job)."""
    try:
        owned = _process_monitor is None
        monitor = _install(settings)
        monitor.attach(job.id, job.tenant_id, attempt, child_pid)
        return JobMonitor(monitor, job.id, owned)
    except Exception:
        log.exception("monitoring %s did not start; training goes on without GPU metrics", job.id)
        return JobMonitor(None, job.id, False)
