"""A job's work directory holds a copy of the tenant's training data (issue 13, "Files on disk"): it is 0700
with owner-only files while the job runs, and it is gone when the job ends, unless it failed and
TUNEQUEUE_KEEP_FAILED_WORKDIRS asks to keep it. Real jobs on the tiny model, run by `run_job` in this process
(the training child is a real subprocess)."""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import state
from common.artifacts import get_store
from common.db import session_scope
from common.models import Job
from common.schemas.job_spec import JobSpec
from common.services import files as file_service
from common.services import jobs as job_service
from common.settings import Settings, get_settings
from tests.support.factories import chat_rows, jsonl, spec
from worker.prepare import prepare_job_dir
from worker.runner import run_job
from worker.workdirs import make_attempt_dir, remove_attempt_dirs


def queued_job(tenant_id: str) -> str:
    """A real upload and a real POST /jobs (service level), marked queued as the validation worker would."""
    with session_scope() as session:
        row = file_service.create_file(session, get_store(), get_settings(), tenant_id=tenant_id,
                                       src=io.BytesIO(jsonl(chat_rows(8))), filename="train.jsonl",
                                       purpose="fine-tune")
        assert row.status == "processed", row.errors
        body = spec(row.id)
        body["hyperparameters"] = {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 64}
        job, _ = job_service.create_job(session, get_settings(), tenant_id=tenant_id,
                                        spec=JobSpec.model_validate(body))
        state.mark_queued(session, job)
        return job.id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Watcher(threading.Thread):
    """Records the modes of everything under the job's directory while the job runs."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.seen: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.root.exists():
                    self.seen.setdefault(".", mode(self.root))
                    for path in self.root.rglob("*"):
                        self.seen.setdefault(str(path.relative_to(self.root)), mode(path))
            except FileNotFoundError:  # removed while we looked
                pass
            self.stop.wait(0.05)


@pytest.fixture
def one_thread_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def watch(tiny_model: Path, one_thread_children: None) -> Iterator[Any]:
    watchers: list[Watcher] = []

    def start(job_id: str) -> Watcher:
        w = Watcher(get_settings().work_path / job_id)
        w.start()
        watchers.append(w)
        return w

    yield start
    for w in watchers:
        w.stop.set()
        w.join()


def test_a_succeeded_jobs_work_dir_is_private_while_it_runs_and_gone_after(
    tenant: tuple[str, str], watch: Any
) -> None:
    job_id = queued_job(tenant[0])
    watcher = watch(job_id)
    assert run_job(job_id) == "succeeded"
    watcher.stop.set()
    watcher.join()
    seen = watcher.seen
    assert {"attempt-1", "attempt-1/train.jsonl", "attempt-1/job.json", "attempt-1/child.log"} <= set(seen), seen
    dirs = {name: m for name, m in seen.items() if name in (".", "attempt-1")}
    assert dirs == {".": 0o700, "attempt-1": 0o700}
    assert all(m & 0o077 == 0 for m in seen.values()), {k: oct(m) for k, m in seen.items() if m & 0o077}
    assert not (get_settings().work_path / job_id).exists()


def test_a_failed_jobs_work_dir_is_kept_only_when_the_setting_asks(tenant: tuple[str, str], watch: Any) -> None:
    failing = get_settings().model_copy(update={"fault_injection": {"oom_at_step": 1},
                                                "keep_failed_workdirs": True})
    job_id = queued_job(tenant[0])
    assert run_job(job_id, failing) == "failed"
    kept = failing.work_path / job_id / "attempt-1"
    assert (kept / "train.jsonl").is_file() and (kept / "child.log").is_file()
    assert mode(kept) == 0o700 and mode(kept.parent) == 0o700
    with session_scope() as session:
        error = session.get_one(Job, job_id).error
        assert error is not None and error["code"] == "cuda_oom"

    removed = failing.model_copy(update={"keep_failed_workdirs": False})
    other = queued_job(tenant[0])
    assert run_job(other, removed) == "failed"
    assert not (removed.work_path / other).exists()


def test_prepare_makes_the_job_dirs_0700_and_its_files_0600_under_any_umask(tenant: tuple[str, str]) -> None:
    job_id = queued_job(tenant[0])
    previous = os.umask(0o022)  # the usual default: files 0644, directories 0755
    try:
        with session_scope() as session:
            prepared = prepare_job_dir(session, get_store(), get_settings(), session.get_one(Job, job_id), 1)
    finally:
        os.umask(previous)
    job_dir = prepared.job_dir
    assert mode(job_dir) == 0o700 and mode(job_dir.parent) == 0o700
    assert {p.name: mode(p) for p in job_dir.iterdir()} == {"train.jsonl": 0o600, "job.json": 0o600}
    remove_attempt_dirs(get_settings(), job_id, 1, "succeeded")
    assert not job_dir.parent.exists()


def test_removing_an_attempt_leaves_another_attempts_dir(tmp_path: Path) -> None:
    settings = Settings(work_dir=str(tmp_path / "work"))
    old = make_attempt_dir(settings, "ftjob-x", "attempt-1")
    retry = make_attempt_dir(settings, "ftjob-x", "attempt-1-oom-retry-1")
    new = make_attempt_dir(settings, "ftjob-x", "attempt-2")  # a new owner on the same host
    assert remove_attempt_dirs(settings, "ftjob-x", 1, "lost")
    assert not old.exists() and not retry.exists() and new.is_dir()
    assert remove_attempt_dirs(settings, "ftjob-x", 2, "succeeded")
    assert not (tmp_path / "work" / "ftjob-x").exists() and (tmp_path / "work").is_dir()
