"""Relay the training child's events: progress to Redis at once (the live view) and to Postgres, fenced by attempt
(the durable view: `jobs.last_progress` at most once a second, and one metrics event per `metrics_event_every`
steps, so a 100,000-step job writes 10,000 rows at the default, not 100,000).

The relay runs in the worker parent, beside the training child, so its writes are off the training loop's
path; what the child pays per logging step is one JSON line on a pipe (benchmarks/report_overhead.py)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import Any

from common import state
from common.db import session_scope
from common.models import Job
from common.progress import ProgressChannel
from common.settings import Settings
from worker.child_events import parse_line
from worker.monitor import latest_sample

log = logging.getLogger("tunequeue.worker")

DB_PROGRESS_SECONDS = 1.0  # jobs.last_progress is written at most this often (plus every metrics event)
# A report that lacks one of these (an evaluation-only event, the end-of-training safety net) keeps the last
# known value in the live view instead of blanking it.
STICKY = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eta_seconds", "eval_loss", "eval_accuracy",
          "peak_memory_mb")


class ProgressRelay:
    """What one attempt's progress, logs, result and error become. Plain object: a test drives `handle`."""

    def __init__(self, job_id: str, tenant_id: str, attempt: int, settings: Settings,
                 channel: ProgressChannel | None = None) -> None:
        self.job_id, self.tenant_id, self.attempt, self.settings = job_id, tenant_id, attempt, settings
        self.channel = channel or ProgressChannel()
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.live: dict[str, Any] = {}
        self.owner = True  # False once a fenced write finds another attempt owns the job
        self._last_event_step = -1
        self._last_db_write = 0.0
        self._published = False

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.pop("type", None)
        if kind == "progress":
            self._progress(event)
        elif kind == "log":
            if not self.owner:
                return
            with session_scope() as session:
                added = state.add_event(session, self.job_id, str(event.get("message", "")),
                                        level=str(event.get("level") or "info"), owner_attempt=self.attempt)
            self.owner = added is not None
        elif kind == "result":
            self.result = event
        elif kind == "error":
            self.error = {"code": event.get("code") or "training_error", "message": event.get("message") or "",
                          "param": event.get("param")}

    def _progress(self, event: dict[str, Any]) -> None:
        if not self.owner:  # another attempt owns the job: its relay publishes, this one would only confuse
            return
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
        evaluated = event.get("eval_loss") is not None or event.get("eval_accuracy") is not None
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
    if event.get("eval_loss") is not None:
        parts.append(f"validation loss={event['eval_loss']:.4f}")
    if event.get("eval_accuracy") is not None:
        parts.append(f"validation accuracy={event['eval_accuracy']:.4f}")
    return text + (": " + ", ".join(parts) if parts else "")


class ChildRelay(threading.Thread):
    """Reads the child's stdout and hands each event line to a `ProgressRelay`."""

    def __init__(self, proc: subprocess.Popen[str], job: Job, attempt: int, settings: Settings) -> None:
        super().__init__(daemon=True, name=f"relay-{job.id}")
        self.proc = proc
        self.relay = ProgressRelay(job.id, job.tenant_id, attempt, settings)

    @property
    def result(self) -> dict[str, Any] | None:
        return self.relay.result

    @property
    def error(self) -> dict[str, Any] | None:
        return self.relay.error

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_line(line.rstrip("\n"))
            if event is None:
                continue
            try:
                self.relay.handle(event)
            except Exception:  # a relay hiccup (Postgres blip) must never kill the job
                log.exception("relaying %s for %s failed", event.get("type"), self.relay.job_id)
