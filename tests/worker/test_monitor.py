"""The worker parent's live reporting over the real Postgres and Redis: the monitor (GPU samples into the live view
and `jobs.last_progress`, the worker's registration with a TTL) with a stand-in NVML library, and the progress
relay (downsampled durable metrics, fencing by attempt)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from common.db import session_scope
from common.ids import new_id
from common.models import Job, JobEvent
from common.progress import ProgressChannel
from common.redis_client import get_redis
from common.settings import get_settings
from common.worker_registry import WorkerRegistry, worker_key
from tests.support.jobs import claim, finish, lose_lease, progress, queued_job, relay
from tests.support.nvml import MIB, Card, StandInNVML
from tests.support.waiting import wait_until
from worker import monitor as monitor_module
from worker import relay as relay_module
from worker.gpu import GpuSampler
from worker.monitor import WorkerMonitor, latest_sample, merge_progress, start_monitor
from worker.relay import ChildReader
from worker.train.protocol import EVENT_PREFIX, ResultEvent, encode


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the training child (the monitor only needs its pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def running_job(tenant_id: str) -> tuple[str, int]:
    job_id = queued_job(tenant_id)
    return job_id, claim(job_id)


def events(job_id: str, **where: Any) -> list[JobEvent]:
    with session_scope() as session:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        for k, v in where.items():
            stmt = stmt.where(getattr(JobEvent, k) == v)
        return list(session.scalars(stmt))


def job_row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get_one(Job, job_id)


def live_view(job_id: str) -> dict[str, Any]:
    """The job's live progress in Redis; there must be one."""
    view = ProgressChannel().read_progress(job_id)
    assert view is not None, f"no live progress for {job_id} in Redis"
    return view


def durable_view(job_id: str) -> dict[str, Any]:
    """`jobs.last_progress`; there must be one."""
    view = job_row(job_id).last_progress
    assert view is not None, f"no last_progress for {job_id} in Postgres"
    return view


def metrics_data(job_id: str) -> list[dict[str, Any]]:
    """The `data` of the job's metrics events, oldest first."""
    return [e.data or {} for e in events(job_id, type="metrics")]


def host_name() -> str:
    return f"test-host-{new_id('h')[-8:]}"


# --- monitor ---------------------------------------------------------------------------------------------


def test_monitor_samples_into_the_live_view_and_registers_each_gpu(tenant, child) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    cards = [Card("GPU-aaaa", procs=[(child.pid, 2000 * MIB)]), Card("GPU-bbbb", used_mb=3)]
    settings = get_settings()
    host = host_name()
    mon = WorkerMonitor(settings, sampler=GpuSampler(StandInNVML(cards), cuda_visible_devices=None), host=host)
    try:
        mon.attach(job_id, tenant_id, attempt, child.pid)
        mon.tick()
        live = live_view(job_id)
        assert live is not None and live["attempt"] == attempt
        assert [g["process_memory_mb"] for g in live["gpus"]] == [2000.0, None]
        assert live["process_rss_mb"] > 0 and live["sampled_at"] > time.time() - 10
        latest = mon.latest_for(job_id)
        assert latest is not None and latest["gpus"] == live["gpus"] and mon.latest_for("ftjob-other") is None
        durable = job_row(job_id).last_progress
        assert durable is not None and durable["gpus"] == live["gpus"], "the first sample also goes to Postgres"

        redis = get_redis()
        for slot in ("0", "1"):
            reg = WorkerRegistry().registrations()
            mine = {r["key"]: r for r in reg if r.get("host") == host}
            entry = mine[worker_key(host, slot)]
            assert entry["job_id"] == job_id and entry["tenant_id"] == tenant_id and entry["attempt"] == attempt
            assert entry["gpu"]["index"] == int(slot) and entry["gpu"]["memory_total_mb"] == 80000.0
            assert 0 < redis.ttl(worker_key(host, slot)) <= settings.worker_ttl_seconds

        mon.detach(job_id)
        mon.tick()
        idle = {r["key"]: r for r in WorkerRegistry().registrations() if r.get("host") == host}
        assert idle[worker_key(host, "0")]["job_id"] is None, "an idle worker stays registered, without a job"
        assert mon.latest_for(job_id) is None
    finally:
        mon.stop()
        ProgressChannel().clear(job_id)
    assert not redis.exists(worker_key(host, "0"), worker_key(host, "1")), "a stopped monitor unregisters"


def test_nvml_failing_mid_job_warns_once_and_never_fails_the_job(tenant, child) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    cards = [Card("GPU-aaaa", procs=[(child.pid, 10 * MIB)])]
    mon = WorkerMonitor(get_settings(), sampler=GpuSampler(StandInNVML(cards), cuda_visible_devices=None),
                        host=host_name())
    try:
        mon.attach(job_id, tenant_id, attempt, child.pid)
        mon.tick()
        cards[0].lost = True
        for _ in range(3):
            sample = mon.tick()
        assert "GPU is lost" in sample["gpus"][0]["error"]
        warnings = events(job_id, level="warning")
        assert len(warnings) == 1 and "GPU metrics unavailable" in warnings[0].message
        assert warnings[0].attempt == attempt
        assert job_row(job_id).status == "running"
    finally:
        mon.stop()
        ProgressChannel().clear(job_id)


def test_a_host_without_gpus_reports_no_gpus_and_the_process_memory(tenant, child) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    host = host_name()
    no_driver = StandInNVML([], init_error="NVML Shared Library Not Found")
    mon = WorkerMonitor(get_settings(), sampler=GpuSampler(no_driver, cuda_visible_devices=None), host=host)
    try:
        mon.attach(job_id, tenant_id, attempt, child.pid)
        mon.tick()
        live = live_view(job_id)
        assert live["gpus"] == [] and live["process_rss_mb"] > 0
        regs = [r for r in WorkerRegistry().registrations() if r.get("host") == host]
        assert [r["key"] for r in regs] == [worker_key(host, f"cpu-{os.getpid()}")]
        assert regs[0]["gpu"] is None and regs[0]["job_id"] == job_id and regs[0]["host_memory_available_mb"] > 0
    finally:
        mon.stop()
        ProgressChannel().clear(job_id)


def test_gpu_samples_in_postgres_are_fenced_by_attempt(tenant) -> None:  # type: ignore[no-untyped-def]
    job_id, attempt = running_job(tenant[0])
    with session_scope() as session:
        assert merge_progress(session, job_id, attempt, {"gpus": [{"index": 0}], "step": 3})
        assert merge_progress(session, job_id, attempt, {"gpus": []})
        assert not merge_progress(session, job_id, attempt + 1, {"gpus": [{"index": 9}]})
    assert job_row(job_id).last_progress == {"gpus": [], "step": 3}, "merged, and a stale attempt wrote nothing"


def test_start_monitor_outside_celery_watches_the_job_then_leaves_nothing(tenant, child) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    settings = get_settings().model_copy(update={"gpu_sample_seconds": 0.1})
    handle = start_monitor(job_row(job_id), attempt, child.pid, settings)  # the real NVML: gpus [] without one
    try:
        assert handle.owned and handle.monitor is not None
        sample = wait_until(lambda: latest_sample(job_id))
        assert isinstance(sample["gpus"], list) and sample["process_rss_mb"] > 0
        host = handle.monitor.host
        assert wait_until(lambda: [r for r in WorkerRegistry().registrations()
                              if r.get("host") == host and r.get("job_id") == job_id])
        # The relay copies the newest sample into what it records durably.
        r = relay(job_id, tenant_id, attempt)
        r.handle(progress(1))
        recorded = metrics_data(job_id)[-1]
        assert isinstance(recorded["gpus"], list) and recorded["process_rss_mb"] > 0
        assert durable_view(job_id)["process_rss_mb"] > 0
    finally:
        handle.stop()
        ProgressChannel().clear(job_id)
    assert latest_sample(job_id) is None and monitor_module._process_monitor is None
    assert not [r for r in WorkerRegistry().registrations() if r.get("job_id") == job_id]


# --- relay -----------------------------------------------------------------------------------------------


def test_relay_keeps_one_metrics_event_per_n_steps_plus_evaluations_and_the_last(tenant, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(relay_module, "DB_PROGRESS_SECONDS", 3600.0)  # only due steps reach Postgres
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    r = relay(job_id, tenant_id, attempt, metrics_event_every=3)
    r.handle(progress(1, total=10))
    r.handle(progress(2, total=10))
    assert live_view(job_id)["step"] == 2, "Redis gets every step"
    assert durable_view(job_id)["step"] == 1, "Postgres gets the due ones"
    for step in range(3, 11):
        extra = {"valid_loss": 1.5, "valid_mean_token_accuracy": 0.25} if step == 5 else {}
        r.handle(progress(step, total=10, peak_memory_mb=300.0 + step, **extra))
    kept = events(job_id, type="metrics")
    data = metrics_data(job_id)
    assert [d["step"] for d in data] == [1, 4, 5, 8, 10]
    assert data[2]["valid_loss"] == 1.5 and "validation loss=1.5000" in kept[2].message
    assert "validation token accuracy=0.2500" in kept[2].message
    assert data[-1]["peak_memory_mb"] == 310.0 and all(e.attempt == attempt for e in kept)
    assert durable_view(job_id)["step"] == 10 and job_row(job_id).trained_tokens == 1280
    live = live_view(job_id)
    assert live["valid_loss"] == 1.5, "the last evaluation stays in the live view"
    finish(job_id, attempt)
    ProgressChannel().clear(job_id)


def test_relay_keeps_the_last_known_loss_when_a_report_has_none(tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    r = relay(job_id, tenant_id, attempt)
    r.handle(progress(3, loss=1.25))
    r.handle(progress(4, loss=None))  # the end-of-training safety net reports no loss
    assert live_view(job_id)["loss"] == 1.25
    assert durable_view(job_id)["loss"] == 1.25
    last = metrics_data(job_id)[-1]
    assert last["step"] == 4 and last.get("loss") is None, "the event records what that step had"
    ProgressChannel().clear(job_id)


def test_a_stale_relay_writes_nothing_after_the_job_was_requeued(tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, first = running_job(tenant_id)
    old = relay(job_id, tenant_id, first)
    old.handle(progress(1))
    old.handle({"type": "log", "level": "warning", "message": "first attempt speaking"})
    lose_lease(job_id)  # the reaper requeues after a lost lease; another worker claims it
    second = claim(job_id)
    new = relay(job_id, tenant_id, second)
    new.handle(progress(1))
    before = [e.id for e in events(job_id)]
    old.handle(progress(2))
    old.handle({"type": "log", "level": "info", "message": "still here?"})
    old.handle(progress(3))
    assert [e.id for e in events(job_id)] == before and old.owner is False
    durable = durable_view(job_id)
    assert (durable["attempt"], durable["step"]) == (second, 1)
    assert live_view(job_id)["attempt"] == second, "nor does it publish once it knows"
    logs = events(job_id, type="message")
    assert [(e.level, e.message, e.attempt) for e in logs] == [("warning", "first attempt speaking", first)]
    ProgressChannel().clear(job_id)


def test_relay_keeps_result_and_error_for_the_runner(tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    r = relay(job_id, tenant_id, attempt)
    result: ResultEvent = {"type": "result", "adapter_dir": "/x", "first_loss": 2.0, "last_loss": 1.0,
                           "train_loss": 1.5, "trained_tokens": 512, "steps": 4, "stage": "sft", "method": "lora"}
    r.handle(result)
    r.handle({"type": "error", "code": "cuda_oom", "message": "out of memory", "param": None})
    assert r.result == result
    assert r.error == {"code": "cuda_oom", "message": "out of memory", "param": None}


def test_child_reader_relays_the_event_lines_of_a_real_process_and_skips_the_rest(tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = tenant
    job_id, attempt = running_job(tenant_id)
    lines = [
        "Loading checkpoint shards: 100%",  # library noise
        encode({"type": "log", "level": "warning", "message": "from the child"}),
        encode(progress(2, total=4)),
        EVENT_PREFIX + '{"type": "progress", "step": 3}',  # not a whole event
        encode({"type": "error", "code": "training_error", "message": "boom", "param": None}),
    ]
    script = "import sys; sys.stdout.write(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", script, "".join(line + "\n" for line in lines)],
                            stdout=subprocess.PIPE, text=True)
    r = relay(job_id, tenant_id, attempt)
    reader = ChildReader(proc, r)
    reader.start()
    reader.join(timeout=30)
    proc.wait()
    assert not reader.is_alive()
    assert r.error == {"code": "training_error", "message": "boom", "param": None}
    assert live_view(job_id)["step"] == 2, "the half event (step 3) was not relayed"
    assert [e.message for e in events(job_id, type="message")] == ["from the child"]
    ProgressChannel().clear(job_id)
