"""Per-job monitoring in the worker parent while the child trains (GPU sampling, worker registration).

The runner calls `start_monitor(...)` after spawning the child and `.stop()` when it exits."""

from __future__ import annotations

from common.models import Job
from common.settings import Settings


class JobMonitor:
    def stop(self) -> None:
        pass


def start_monitor(job: Job, attempt: int, child_pid: int, settings: Settings) -> JobMonitor:
    return JobMonitor()
