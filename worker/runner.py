"""Run one job, without Celery: claim it (fencing epoch = attempt), train it in a fresh child interpreter,
heartbeat the lease, relay progress, stop the child on cancel, publish the adapter, record the final state."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import state
from common.artifacts import LocalArtifactStore, get_store
from common.db import session_scope
from common.models import Job
from common.progress import ProgressChannel
from common.settings import Settings, get_settings
from worker.monitor import start_monitor
from worker.prepare import JobSetupError, prepare_job_dir
from worker.publish import PublishError, record_model, upload_adapter
from worker.relay import ChildRelay

log = logging.getLogger("tunequeue.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _stop_child(proc: subprocess.Popen[str], grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _spawn(job_dir: Path, settings: Settings) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(job_dir / "child.log", "ab") as stderr:
        return subprocess.Popen(
            [settings.train_python or sys.executable, "-m", "worker.train", str(job_dir)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1, env=env,
            start_new_session=True,  # its own process group: cancel kills it and anything it started
            cwd=Path(__file__).resolve().parent.parent,
        )


def _fail(job_id: str, attempt: int, error: dict[str, Any]) -> str:
    with session_scope() as session:
        state.finish(session, job_id, attempt, "failed", error=error)
    return "failed"


def run_job(job_id: str, settings: Settings | None = None, store: LocalArtifactStore | None = None) -> str:
    """Returns the outcome: succeeded, failed, cancelled, not_claimed or lost (another owner took over)."""
    settings = settings or get_settings()
    store = store or get_store()
    with session_scope() as session:
        attempt = state.claim(session, job_id, worker=worker_name(), lease_seconds=settings.lease_seconds)
    if attempt is None:
        log.info("job %s is not claimable (already taken, cancelled or finished); acking", job_id)
        return "not_claimed"
    log.info("claimed %s as attempt %d", job_id, attempt)
    try:
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            job_dir = prepare_job_dir(session, store, settings, job, attempt)
    except JobSetupError as exc:
        return _fail(job_id, attempt, exc.error)
    except Exception as exc:
        log.exception("preparing %s failed", job_id)
        return _fail(job_id, attempt, {"code": "worker_error", "message": f"{type(exc).__name__}: {exc}",
                                       "param": None})

    proc = _spawn(job_dir, settings)
    relay = ChildRelay(proc, job, attempt, settings)
    relay.start()
    monitor = start_monitor(job, attempt, proc.pid, settings)
    try:
        outcome = _supervise(proc, job_id, attempt, settings)
    finally:
        monitor.stop()
    relay.join(timeout=30)
    if outcome in ("lost", "cancelled"):
        return outcome
    if proc.returncode == 0 and relay.result is not None:
        return _publish(job, attempt, Path(relay.result["adapter_dir"]), relay.result, store)
    error = relay.error or _exit_error(proc.returncode, job_dir)
    return _fail(job_id, attempt, error)


def _supervise(proc: subprocess.Popen[str], job_id: str, attempt: int, settings: Settings) -> str:
    """Heartbeat until the child exits. Returns 'exited', 'cancelled' or 'lost'."""
    while True:
        try:
            proc.wait(timeout=settings.heartbeat_seconds)
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        try:
            with session_scope() as session:
                owner, cancel = state.heartbeat(session, job_id, attempt, lease_seconds=settings.lease_seconds)
        except Exception as exc:  # Postgres blip: keep training; the lease has slack for a few misses
            log.warning("heartbeat for %s failed: %s", job_id, exc)
            continue
        if not owner:
            log.warning("lost ownership of %s (attempt %d); stopping the child", job_id, attempt)
            _stop_child(proc, settings.cancel_grace_seconds)
            return "lost"
        if cancel:
            _stop_child(proc, settings.cancel_grace_seconds)
            with session_scope() as session:
                state.finish(session, job_id, attempt, "cancelled")
            return "cancelled"


def _exit_error(returncode: int | None, job_dir: Path) -> dict[str, Any]:
    tail = ""
    log_path = job_dir / "child.log"
    if log_path.exists():
        tail = log_path.read_text(errors="replace")[-800:].strip()
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        message = f"the training process was killed by {name}"
        code = "host_oom" if name == "SIGKILL" else "worker_lost"
        if code == "host_oom":
            message += " (most often the host's out-of-memory killer: lower batch_size or max_seq_length)"
        return {"code": code, "message": message, "param": None}
    return {"code": "training_error", "message": f"the training process exited with code {returncode}: {tail}",
            "param": None}


def _publish(job: Job, attempt: int, adapter_dir: Path, result: dict[str, Any], store: LocalArtifactStore) -> str:
    try:
        key, manifest = upload_adapter(store, job, attempt, adapter_dir)
    except PublishError as exc:
        return _fail(job.id, attempt, {"code": "publish_failed", "message": str(exc), "param": None})
    manifest["training"] = {k: result.get(k) for k in ("first_loss", "last_loss", "train_loss", "trained_tokens",
                                                        "steps")}
    with session_scope() as session:
        row = record_model(session, job, attempt, key, manifest)
        if row is None:
            session.rollback()
            # Refused: either a cancel arrived as training ended, or another owner took the job over.
            cancelled = state.finish(session, job.id, attempt, "cancelled")
    if row is None:
        store.delete_prefix(key)
        return "cancelled" if cancelled else "lost"
    try:
        ProgressChannel().publish_model({"event": "published", "model": row.id, "tenant_id": job.tenant_id,
                                         "base_model": job.base_model, "storage_key": key})
    except Exception as exc:  # serve also reloads from Postgres on a miss
        log.warning("could not announce %s on Redis: %s", row.id, exc)
    return "succeeded"
