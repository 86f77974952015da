"""Relay the training child's events: progress to Redis at once (the live view) and to Postgres, fenced by attempt
(the durable view, downsampled to one metrics event per `metrics_event_every` steps)."""

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

log = logging.getLogger("tunequeue.worker")


class ChildRelay(threading.Thread):
    """Reads the child's stdout; progress goes to Redis at once and to Postgres (fenced by attempt)."""

    def __init__(self, proc: subprocess.Popen[str], job: Job, attempt: int, settings: Settings) -> None:
        super().__init__(daemon=True, name=f"relay-{job.id}")
        self.proc, self.job, self.attempt, self.settings = proc, job, attempt, settings
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.channel = ProgressChannel()
        self._last_event_step = -1

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_line(line.rstrip("\n"))
            if event is None:
                continue
            try:
                self.handle(event)
            except Exception:  # a relay hiccup (Redis down) must never kill the job
                log.exception("relaying %s for %s failed", event.get("type"), self.job.id)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.pop("type")
        if kind == "progress":
            event["updated_at"] = time.time()
            try:
                self.channel.publish_progress(self.job.id, event)
            except Exception as exc:
                log.warning("live progress for %s not published (Redis: %s)", self.job.id, exc)
            with session_scope() as session:
                state.record_progress(session, self.job.id, self.attempt, event)
                step = int(event.get("step") or 0)
                every = self.settings.metrics_event_every
                if self._last_event_step < 0 or step - self._last_event_step >= every or \
                        step >= int(event.get("total_steps") or 0):
                    self._last_event_step = step
                    loss = event.get("loss")
                    text = f"Step {step}/{event.get('total_steps')}" + (f": training loss={loss:.4f}" if loss else "")
                    state.add_event(session, self.job, text, type="metrics", data=event, attempt=self.attempt)
        elif kind == "log":
            with session_scope() as session:
                state.add_event(session, self.job, str(event.get("message", "")), level=event.get("level", "info"),
                                attempt=self.attempt)
        elif kind == "result":
            self.result = event
        elif kind == "error":
            self.error = {"code": event.get("code") or "training_error", "message": event.get("message") or "",
                          "param": event.get("param")}
