"""A job's work directories on the worker's disk: private while the job runs, gone when it ends.

`<work_dir>/<job id>/attempt-<N>[-oom-retry-<k>]/` holds a copy of the tenant's training data, checkpoints and
the adapter being trained (worker/prepare.py lays it out). Every directory of it that we create is 0700 and the
files the worker writes are 0600 (`private_file`); the worker process and its training children run under a
077 umask (worker/celery_app.py, worker/runner.py `_spawn`), so nothing below is readable by another local user.
The work root itself (`TUNEQUEUE_WORK_DIR`) is left as the operator made it: it may be shared.

When an attempt ends (succeeded, failed, cancelled, requeued or lost), `remove_attempt_dirs` deletes that
attempt's directories, and the job's directory once it is empty; only a failed attempt is kept, and only when
`TUNEQUEUE_KEEP_FAILED_WORKDIRS` is set (for debugging). Another attempt's directory (a new owner on the same
host) is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from common.settings import Settings

log = logging.getLogger("tunequeue.worker")

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077


def job_root(settings: Settings, job_id: str) -> Path:
    return settings.work_path / job_id


def make_attempt_dir(settings: Settings, job_id: str, name: str) -> Path:
    """A fresh, empty `<work_dir>/<job id>/<name>/`, it and the job's directory 0700 whatever the umask."""
    settings.work_path.mkdir(parents=True, exist_ok=True)
    root = job_root(settings, job_id)
    root.mkdir(mode=DIR_MODE, exist_ok=True)
    os.chmod(root, DIR_MODE)
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path, mode: str = "w") -> IO[str]:
    """Open a new text file readable by its owner only (0600, whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return open(fd, mode, encoding="utf-8")  # noqa: SIM115 - the caller closes it


def private_binary(path: Path) -> IO[bytes]:
    """Open a file for appending bytes, readable by its owner only (the child's stderr log)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return open(fd, "ab")  # noqa: SIM115 - the caller closes it


def attempt_dirs(settings: Settings, job_id: str, attempt: int) -> list[Path]:
    """This attempt's directories: attempt-N and its OOM retries attempt-N-oom-retry-k."""
    root = job_root(settings, job_id)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name == f"attempt-{attempt}" or
            p.name.startswith(f"attempt-{attempt}-oom-retry-")]


def remove_attempt_dirs(settings: Settings, job_id: str, attempt: int, outcome: str) -> bool:
    """Delete the attempt's work directories after it ended with `outcome`; keep a failed one when
    `keep_failed_workdirs` is set. Returns whether they were removed. Never raises: a leftover directory is
    logged, not a reason to change the job's outcome."""
    if outcome == "failed" and settings.keep_failed_workdirs:
        log.info("keeping the work directories of %s attempt %d (TUNEQUEUE_KEEP_FAILED_WORKDIRS)", job_id, attempt)
        return False
    for path in attempt_dirs(settings, job_id, attempt):
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            log.warning("could not remove the work directory %s", path)
    with contextlib.suppress(OSError):  # not empty: another attempt (or a kept one) still uses it
        job_root(settings, job_id).rmdir()
    return True
