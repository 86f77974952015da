"""The worker parent's side of the protocol in worker/train/protocol.py: what the training child's events become.

- `ChildReader` (a thread) reads the child's stdout, parses each event line, hands it to a relay;
- `ProgressRelay` turns progress into the live view in Redis at once and the durable view in Postgres, fenced
  by attempt (`jobs.last_progress` at most once a second, and one metrics event per `metrics_event_every`
  steps, so a 100,000-step job writes 10,000 rows at the default, not 100,000); log events into job events;
  an evaluation's generated samples into one `eval_samples` event; and keeps the result and the error for the
  runner;
- `CheckpointRelay`, the one the runner uses, also uploads each checkpoint to the artifact store and records
  it (worker/checkpoints.py), only while its attempt owns the job.

The relay runs in the worker parent, beside the training child, so its writes are off the training loop's
path; what the child pays per logging step is one JSON line on a pipe (benchmarks/report_overhead.py)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from common import state
from common.artifacts import ArtifactStore
from common.db import session_scope
from common.models import Job
from common.progress import ProgressChannel
from common.settings import Settings
from worker.checkpoints import checkpoint_key, record_checkpoint
from worker.monitor import latest_sample
from worker.train.protocol import (
    TRAINING_ERROR,
    CheckpointEvent,
    EvalSamplesEvent,
    Event,
    ProgressEvent,
    ResultEvent,
    parse_line,
)

log = logging.getLogger("tunequeue.worker")

DB_PROGRESS_SECONDS = 1.0  # jobs.last_progress is written at most this often (plus every metrics event)
# A report that lacks one of these (an evaluation-only event, the end-of-training safety net) keeps the last
# known value in the live view instead of blanking it.
VALIDATION = ("valid_loss", "valid_mean_token_accuracy", "valid_preference_accuracy")  # at a step that evaluated
STICKY = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eta_seconds", *VALIDATION, "peak_memory_mb")


class ProgressRelay:
    """What one attempt's progress, logs, result and error become; checkpoints are left to `CheckpointRelay`.
    Plain object: a test drives `handle`."""

    def __init__(self, job_id: str, tenant_id: str, attempt: int, settings: Settings,
                 channel: ProgressChannel | None = None) -> None:
        self.job_id, self.tenant_id, self.attempt, self.settings = job_id, tenant_id, attempt, settings
        self.channel = channel or ProgressChannel()
        self.result: ResultEvent | None = None
        self.error: dict[str, Any] | None = None  # the job's error: the error event's code, message and param
        self.live: dict[str, Any] = {}
        self.owner = True  # False once a fenced write finds another attempt owns the job
        self._last_event_step = -1
        self._last_db_write = 0.0
        self._published = False

    def handle(self, event: Event) -> None:
        if event["type"] == "progress":
            self._progress(event)
        elif event["type"] == "log":
            if not self.owner:
                return
            with session_scope() as session:
                added = state.add_event(session, self.job_id, str(event.get("message", "")),
                                        level=str(event.get("level") or "info"), owner_attempt=self.attempt)
            self.owner = added is not None
        elif event["type"] == "eval_samples":
            self._eval_samples(event)
        elif event["type"] == "result":
            self.result = event
        elif event["type"] == "error":
            self.error = {"code": event.get("code") or TRAINING_ERROR, "message": event.get("message") or "",
                          "param": event.get("param")}

    def _eval_samples(self, event: EvalSamplesEvent) -> None:
        """One job event per evaluation: type `eval_samples`, data {step, samples} (docs/progress.md)."""
        if not self.owner:
            return
        step = int(event["step"])
        # exactly the documented shape, in strings Postgres' JSONB can hold (no NUL), whatever the line carried
        samples = [{key: str(sample.get(key) or "").replace("\x00", "") for key in ("prompt", "reference", "answer")}
                   for sample in event["samples"] if isinstance(sample, dict)]
        seconds = event.get("seconds")
        message = (f"{len(samples)} generated sample{'' if len(samples) == 1 else 's'} at step {step}"
                   + (f" ({seconds:.1f} s)" if isinstance(seconds, int | float) else ""))
        with session_scope() as session:
            added = state.add_event(session, self.job_id, message, type="eval_samples",
                                    data={"step": step, "samples": samples}, owner_attempt=self.attempt)
        self.owner = added is not None

    def _progress(self, progress: ProgressEvent) -> None:
        if not self.owner:  # another attempt owns the job: its relay publishes, this one would only confuse
            return
        event: dict[str, Any] = {key: value for key, value in progress.items() if key != "type"}
        now = time.time()
        for key in STICKY:
            if event.get(key) is None and self.live.get(key) is not None:
                event.pop(key, None)
        self.live.update(event)
        self.live["attempt"] = self.attempt
        self.live["updated_at"] = now
        sample = latest_sample(self.job_id)
        if sample is not None:
            self.live.update(sample)
        try:
            self.channel.publish_progress(self.job_id, self.live, replace=not self._published)
            self._published = True
        except Exception as exc:  # Redis is a live view: losing it loses no job
            log.warning("live progress for %s not published (Redis: %s)", self.job_id, exc)

        step = int(event.get("step") or 0)
        total = int(event.get("total_steps") or 0)
        evaluated = any(event.get(key) is not None for key in VALIDATION)
        due = (self._last_event_step < 0 or step - self._last_event_step >= self.settings.metrics_event_every
               or (total and step >= total) or evaluated)
        if not due and now - self._last_db_write < DB_PROGRESS_SECONDS:
            return
        with session_scope() as session:
            self.owner = state.record_progress(session, self.job_id, self.attempt, dict(self.live))
            self._last_db_write = now
            if due and self.owner:
                self._last_event_step = step
                data = {**event, **({k: sample[k] for k in ("gpus", "process_rss_mb")} if sample else {})}
                state.add_event(session, self.job_id, _metrics_message(event), type="metrics", data=data,
                                owner_attempt=self.attempt)


def _metrics_message(event: dict[str, Any]) -> str:
    text = f"Step {event.get('step')}/{event.get('total_steps')}"
    parts = []
    if event.get("loss") is not None:
        parts.append(f"training loss={event['loss']:.4f}")
    for key, name in zip(VALIDATION, ("validation loss", "validation token accuracy",
                                      "validation preference accuracy"), strict=True):
        if event.get(key) is not None:
            parts.append(f"{name}={event[key]:.4f}")
    return text + (": " + ", ".join(parts) if parts else "")


class CheckpointRelay(ProgressRelay):
    """The progress relay, plus checkpoint events: upload, record (fenced), then free the local copy."""

    def __init__(self, job: Job, attempt: int, settings: Settings, store: ArtifactStore) -> None:
        super().__init__(job.id, job.tenant_id, attempt, settings)
        self.job, self.store = job, store

    def handle(self, event: Event) -> None:
        if event["type"] == "checkpoint":
            self._checkpoint(event)
        else:
            super().handle(event)

    def _checkpoint(self, event: CheckpointEvent) -> None:
        step, path = int(event["step"]), Path(event["path"])
        key = checkpoint_key(self.job, self.attempt, step)
        self.store.put_dir(key, path)
        with session_scope() as session:
            row = record_checkpoint(session, self.job, self.attempt, step, key, dict(event.get("metrics") or {}))
        if row is None:
            self.store.delete_prefix(key)
            log.warning("checkpoint %d of %s not recorded: attempt %d no longer owns the job", step, self.job.id,
                        self.attempt)
            return
        shutil.rmtree(path, ignore_errors=True)


class ChildReader(threading.Thread):
    """Reads the child's stdout until it closes and hands each event to `relay`; other lines are ignored."""

    def __init__(self, proc: subprocess.Popen[str], relay: ProgressRelay) -> None:
        super().__init__(daemon=True, name=f"relay-{relay.job_id}")
        self.proc, self.relay = proc, relay

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_line(line.rstrip("\n"))
            if event is None:
                continue
            try:
                self.relay.handle(event)
            except Exception:  # a relay hiccup (Postgres blip) must never kill the job
                log.exception("relaying %s for %s failed", event["type"], self.relay.job_id)
