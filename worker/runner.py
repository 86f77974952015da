"""Run one job, without Celery: claim it (fencing epoch = attempt), train it in a fresh child interpreter,
heartbeat the lease, relay progress and checkpoints, stop the child on cancel, hand the job back on shutdown,
retry a CUDA OOM at a smaller micro-batch, publish the adapter, record the final state."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from common import state
from common.artifacts import ArtifactStore, get_store
from common.db import session_scope
from common.ids import new_id
from common.model_events import announce, announce_training
from common.models import Job
from common.scheduling import placement
from common.scheduling.claim import claim_next
from common.schemas.integrations import ALLOWED_SECRET_NAMES
from common.schemas.job_spec import training_spec
from common.secrets_box import SecretsUnavailable
from common.services.quotas import over_job_hours
from common.services.secrets import child_environment
from common.settings import Settings, get_settings
from worker.capabilities import local_devices, register_local_devices
from worker.launch import child_command, killed_rank, rank_environment
from worker.maintenance import hold, preempt, requeue
from worker.monitor import start_monitor
from worker.prepare import JobSetupError, prepare_job_dir
from worker.publish import PublishError, record_model, record_peak, upload_adapter
from worker.relay import CheckpointRelay, ChildReader
from worker.result_files import record_result_file
from worker.train.protocol import CUDA_OOM, EXIT_PREEMPTED, TRAINING_ERROR, ResultEvent
from worker.workdirs import UMASK, private_binary, remove_attempt_dirs

log = logging.getLogger("tunequeue.worker")
T = TypeVar("T")

MAX_OOM_RETRIES = 3  # a CUDA OOM with batch_size "auto" retries, within the attempt, at half the micro-batch
SHUTDOWN = threading.Event()  # set by the Celery worker's shutdown signal (worker/celery_app.py)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def with_db_retries(fn: Callable[[], T], *, tries: int = 30, delay: float = 2.0) -> T:
    """Final writes must not be lost to a Postgres restart: retry while the database is away."""
    for i in range(tries):
        try:
            return fn()
        except OperationalError as exc:
            if i == tries - 1:
                raise
            log.warning("database unavailable (%s); retrying in %.0fs", type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _stop_child(proc: subprocess.Popen[str], grace: float, sig: signal.Signals = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it if the worker dies, so no orphan keeps the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the lease + reaper still recover the job
        pass


def _spawn(job_dir: Path, settings: Settings, secrets: dict[str, str] | None = None,
           ranks: int = 1) -> subprocess.Popen[str]:
    """`secrets`: the tenant's tracker credentials for this job (common/services/secrets.py `child_environment`),
    in the child's environment only: never in job.json, never in a log. The worker's own values of those
    variables are not inherited, so a job never reports with the operator's account. `ranks` > 1
    (`resources.devices`): the child is torchrun with one rank per device (worker/launch.py)."""
    env = {name: value for name, value in os.environ.items() if name not in ALLOWED_SECRET_NAMES}
    env.update({**(secrets or {}), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    devices = local_devices(settings)
    env = rank_environment(env, ranks, sum(d.kind == "cuda" for d in devices))
    grace = max(settings.cancel_grace_seconds, settings.shutdown_grace_seconds)
    with private_binary(job_dir / "child.log") as stderr:
        return subprocess.Popen(
            child_command(settings.train_python or sys.executable, job_dir, ranks, grace_seconds=grace),
            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1, env=env,
            start_new_session=True,  # its own process group: cancel kills it and anything it started
            preexec_fn=_die_with_parent,  # noqa: PLW1509 — only prctl, async-signal-safe enough
            cwd=Path(__file__).resolve().parent.parent,
            umask=UMASK,  # what it writes (checkpoints, the adapter) is its owner's only
        )


def _fail(job_id: str, attempt: int, error: dict[str, Any]) -> str:
    def write() -> bool:
        with session_scope() as session:
            return state.finish(session, job_id, attempt, "failed", error=error)

    return "failed" if with_db_retries(write) else "lost"


def _event(job: Job, attempt: int, message: str, level: str = "info", data: dict[str, Any] | None = None) -> None:
    with session_scope() as session:  # under the job's row lock, and only while this attempt owns it
        state.add_event(session, job.id, message, level=level, data=data, owner_attempt=attempt)


def run_next(woken_by: str, settings: Settings | None = None, store: ArtifactStore | None = None) -> str:
    """What a woken worker does: claim the best job of its pool under the policy (common/scheduling), whatever job
    the message that woke it named, and run it. Returns the outcome, or not_claimed when nothing waits."""
    settings = settings or get_settings()
    device = register_local_devices(settings)[0]
    with session_scope() as session:
        claimed = claim_next(session, queue=settings.celery_queue, worker=worker_name(), settings=settings,
                             fit=placement.Fit.of(device))
    if claimed is None:
        log.info("woken for %s, but nothing is claimable: no job of %s waits that this worker's device can run; "
                 "acking", woken_by, settings.celery_queue)
        return "not_claimed"
    job_id, attempt = claimed
    log.info("woken for %s; claimed %s (the best under the policy) as attempt %d", woken_by, job_id, attempt)
    return _run_attempt(job_id, attempt, settings, store or get_store(), device)


def run_job(job_id: str, settings: Settings | None = None, store: ArtifactStore | None = None) -> str:
    """Claim this job and run it, whatever else waits (an operator's or a test's explicit run). Returns the outcome:
    succeeded, failed, cancelled, requeued, not_claimed or lost."""
    settings = settings or get_settings()
    with session_scope() as session:
        attempt = state.claim(session, job_id, worker=worker_name(), lease_seconds=settings.lease_seconds)
    if attempt is None:
        log.info("job %s is not claimable (already taken, cancelled or finished); acking", job_id)
        return "not_claimed"
    log.info("claimed %s as attempt %d", job_id, attempt)
    return _run_attempt(job_id, attempt, settings, store or get_store())


def _run_attempt(job_id: str, attempt: int, settings: Settings, store: ArtifactStore,
                 device: placement.Device | None = None) -> str:
    outcome = "failed"  # if _run_claimed raises
    try:
        outcome = _run_claimed(job_id, attempt, settings, store, device)
        return outcome
    finally:
        remove_attempt_dirs(settings, job_id, attempt, outcome)


def _run_claimed(job_id: str, attempt: int, settings: Settings, store: ArtifactStore,
                 device: placement.Device | None) -> str:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
    hp = training_spec(job.spec).hyperparameters
    overrides: dict[str, Any] = {}
    micro, accumulation = hp.micro_batch_size, hp.gradient_accumulation_steps
    fitted = placement.auto_micro_batch(settings, training_spec(job.spec), device) \
        if device is not None and placement.batch_size_is_auto(job.spec) else None
    if device is not None and fitted is not None and fitted != (micro, accumulation):
        micro, accumulation = fitted
        overrides = {"gradient_accumulation_steps": accumulation}
        _event(job, attempt, f"batch_size is auto: micro-batch {micro} × {accumulation} accumulation steps, the "
               f"largest micro-batch that fits this {device.kind} device ({device.memory_bytes / 2**30:.1f} GiB) "
               "by the estimate", data={"micro_batch_size": micro, "gradient_accumulation_steps": accumulation})
    for oom_retry in range(MAX_OOM_RETRIES + 1):
        outcome, error = _train_once(job, attempt, settings, store, oom_retry, overrides)
        if error is None:
            return outcome
        can_shrink = job.spec.get("hyperparameters", {}).get("batch_size") == "auto" and micro > 1
        if error["code"] == CUDA_OOM and can_shrink and oom_retry < MAX_OOM_RETRIES:
            micro, accumulation = micro // 2, accumulation * 2
            overrides = {"batch_size": micro * accumulation, "gradient_accumulation_steps": accumulation}
            _event(job, attempt, f"CUDA out of memory; batch_size is auto, so retrying with micro-batch {micro} × "
                   f"{accumulation} accumulation steps from the newest checkpoint", level="warning",
                   data={"micro_batch_size": micro, "gradient_accumulation_steps": accumulation})
            continue
        return _fail(job_id, attempt, error)
    raise AssertionError("unreachable")


def _train_once(job: Job, attempt: int, settings: Settings, store: ArtifactStore, oom_retry: int,
                overrides: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """One child from spawn to exit. Returns (outcome, None) when decided, or ('failed', error) to decide."""
    try:
        with session_scope() as session:
            prepared = prepare_job_dir(session, store, settings, job, attempt, oom_retry=oom_retry,
                                       overrides=overrides)
            secrets = child_environment(session, settings, job.tenant_id, job.spec.get("integrations"))
    except (JobSetupError, SecretsUnavailable) as exc:
        return "failed", exc.job_error()
    except Exception as exc:
        log.exception("preparing %s failed", job.id)
        return "failed", {"code": "worker_error", "message": f"{type(exc).__name__}: {exc}", "param": None}
    if prepared.resumed_from_step is not None:
        _event(job, attempt, f"Resuming from the checkpoint at step {prepared.resumed_from_step}",
               data={"resumed_from_step": prepared.resumed_from_step})

    ranks = training_spec(job.spec).resources.devices
    if ranks > 1:
        _event(job, attempt, f"Training on {ranks} devices: {ranks} ranks under torchrun, rank 0 reporting",
               data={"ranks": ranks})
    proc = _spawn(prepared.job_dir, settings, secrets, ranks)
    relay = CheckpointRelay(job, attempt, settings, store)
    reader = ChildReader(proc, relay)
    reader.start()
    monitor = start_monitor(job, attempt, proc.pid, settings)
    _announce("training_started", job.id, settings)  # serve on this device releases its idle base models
    try:
        outcome = _supervise(proc, job.id, attempt, settings)
    finally:
        monitor.stop()
        _announce("training_ended", job.id, settings)
    reader.join(timeout=300)  # a last checkpoint may still be uploading
    if outcome in ("lost", "cancelled"):
        return outcome, None
    if outcome == "time_limit" and proc.returncode != 0:
        return "failed", _time_limit_error(job)
    if outcome == "preempt" and proc.returncode != 0:
        return _step_aside(job, attempt), None
    if outcome == "pause" and proc.returncode != 0:
        return ("paused" if with_db_retries(lambda: hold(job.id, attempt)) else "lost"), None
    if outcome == "shutdown" or proc.returncode == EXIT_PREEMPTED:
        return _requeue(job, attempt, settings, "the worker is shutting down"), None
    if proc.returncode == 0 and relay.result is not None:
        return _publish(job, attempt, relay.result, store), None
    killed = _killed_by(proc.returncode, ranks, prepared.job_dir) if relay.error is None else None
    if killed is not None:
        # Killed from outside (the OOM killer, an operator): not the job's fault; try again from a checkpoint.
        name = killed.name
        if attempt < settings.max_attempts:
            return _requeue(job, attempt, settings, f"the training process was killed by {name}"), None
        code = "host_oom" if name == "SIGKILL" else "worker_lost"
        hint = " (most often the host's out-of-memory killer: lower batch_size or max_seq_length)" \
            if code == "host_oom" else ""
        return "failed", {"code": code, "param": None,
                          "message": f"the training process was killed by {name}{hint}, {attempt} times"}
    return "failed", relay.error or _exit_error(proc.returncode, prepared.job_dir)


def _killed_by(returncode: int | None, ranks: int, job_dir: Path) -> signal.Signals | None:
    """The signal that killed the child (a negative exit code), or, for torchrun (`ranks` > 1, which exits 1
    when a rank fails), the one that killed its first failed rank, as its log says (worker/launch.py)."""
    if returncode is not None and returncode < 0:
        return signal.Signals(-returncode)
    if ranks > 1 and returncode and (log_path := job_dir / "child.log").exists():
        killed = killed_rank(log_path.read_text(errors="replace"))
        return killed[1] if killed else None
    return None


def _announce(event: Literal["training_started", "training_ended"], job_id: str, settings: Settings) -> None:
    """Tell a serve on this device (common/model_events.py); best effort: serve also loads on demand."""
    device = local_devices(settings)[0]
    name = f"cuda:{device.id.rpartition(':')[2]}" if device.kind == "cuda" else "cpu"
    try:
        announce_training(event, host=device.host, device=name, job_id=job_id)
    except Exception as exc:
        log.warning("could not announce %s of %s on Redis: %s", event, job_id, exc)


def _requeue(job: Job, attempt: int, settings: Settings, reason: str) -> str:
    done = with_db_retries(lambda: requeue(job.id, attempt, reason))
    return "requeued" if done else "lost"


def _time_limit_error(job: Job) -> dict[str, Any]:
    return {"code": "time_limit_exceeded", "param": None,
            "message": "the job reached its organization's max_job_hours quota and was stopped after a checkpoint; "
                       f"continue it with a new job whose resume_from is its newest checkpoint "
                       f"(GET /jobs/{job.id}/checkpoints)"}


def _step_aside(job: Job, attempt: int) -> str:
    done = with_db_retries(lambda: preempt(job.id, attempt))
    return "requeued" if done else "lost"


def _supervise(proc: subprocess.Popen[str], job_id: str, attempt: int, settings: Settings) -> str:
    """Watch the child until it exits. Returns 'exited', 'cancelled', 'lost', or — once the child was asked to
    checkpoint and stop — 'shutdown' (this worker stops), 'preempt' (the scheduler wants the device for a job
    that goes first), 'pause' (POST /jobs/{id}/pause) or 'time_limit' (the tenant's max_job_hours)."""
    last_beat = time.monotonic()
    while True:
        try:
            proc.wait(timeout=settings.cancel_poll_seconds)
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        if SHUTDOWN.is_set():
            log.warning("worker shutting down: asking %s to checkpoint and stop", job_id)
            _stop_child(proc, settings.shutdown_grace_seconds, signal.SIGUSR1)
            return "exited" if proc.returncode == 0 else "shutdown"
        over_time = False
        try:
            with session_scope() as session:
                if time.monotonic() - last_beat >= settings.heartbeat_seconds:
                    state.heartbeat(session, job_id, attempt, lease_seconds=settings.lease_seconds)
                    last_beat = time.monotonic()
                    over_time = over_job_hours(session, job_id)
                row = session.execute(select(Job.attempt, Job.status, Job.cancel_requested, Job.preempt_requested,
                                             Job.pause_requested).where(Job.id == job_id)).one()
                owner, cancel = (row.attempt == attempt and row.status == "running"), row.cancel_requested
        except Exception as exc:  # Postgres blip: keep training; the lease has slack for a few misses
            log.warning("heartbeat for %s failed: %s", job_id, exc)
            continue
        if owner and not cancel and (over_time or row.preempt_requested or row.pause_requested):
            why = "time_limit" if over_time else "pause" if row.pause_requested else "preempt"
            log.warning("%s: asking %s to checkpoint and stop", why, job_id)
            _stop_child(proc, settings.shutdown_grace_seconds, signal.SIGUSR1)
            return "exited" if proc.returncode == 0 else why
        if not owner:
            log.warning("lost ownership of %s (attempt %d); stopping the child", job_id, attempt)
            _stop_child(proc, settings.cancel_grace_seconds)
            return "lost"
        if cancel:
            _stop_child(proc, settings.cancel_grace_seconds)

            def finish_cancelled() -> bool:
                with session_scope() as session:
                    return state.finish(session, job_id, attempt, "cancelled")

            with_db_retries(finish_cancelled)
            return "cancelled"


def _exit_error(returncode: int | None, job_dir: Path) -> dict[str, Any]:
    tail = ""
    log_path = job_dir / "child.log"
    if log_path.exists():
        tail = log_path.read_text(errors="replace")[-800:].strip()
    return {"code": TRAINING_ERROR, "message": f"the training process exited with code {returncode}: {tail}",
            "param": None}


def _publish(job: Job, attempt: int, result: ResultEvent, store: ArtifactStore) -> str:
    merged_dir = result.get("merged_dir")
    try:
        key, manifest = upload_adapter(store, job, attempt, Path(result["adapter_dir"]),
                                       merged_dir=Path(merged_dir) if merged_dir else None)
    except PublishError as exc:
        return _fail(job.id, attempt, exc.job_error())
    manifest["training"] = {"stage": result["stage"], "first_loss": result["first_loss"],
                            "last_loss": result["last_loss"], "train_loss": result["train_loss"],
                            "trained_tokens": result["trained_tokens"], "steps": result["steps"]}

    results_id = new_id("file")  # one id for every try of write(): a retry writes the same bytes again

    def write() -> tuple[Any, bool]:
        with session_scope() as session:
            row = record_model(session, job, attempt, key, manifest)
            if row is not None:
                record_peak(session, job.id, result.get("peak_memory"))
                record_result_file(session, store, job, results_id)
                return row, False
            session.rollback()
            # Refused: either a cancel arrived as training ended, or another owner took the job over.
            return None, state.finish(session, job.id, attempt, "cancelled")

    row, cancelled = with_db_retries(write)
    if row is None:
        store.delete_prefix(key)
        return "cancelled" if cancelled else "lost"
    try:
        announce("published", model_id=row.id, tenant_id=job.tenant_id, base_model=job.base_model, storage_key=key)
    except Exception as exc:  # serve also finds new adapters in Postgres on a miss
        log.warning("could not announce %s on Redis: %s", row.id, exc)
    return "succeeded"

