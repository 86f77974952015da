"""Placement by device count (`resources.devices`, common/scheduling/placement.py and claim.py) against the real
Postgres: a CPU worker declares its devices with TUNEQUEUE_WORKER_DEVICES (worker/capabilities.py), a worker
claims only the jobs that need no more devices than it has (and, on a CPU, whose ranks' memory fits its budget
together), the attempt's `job_runs` row counts the job's devices for fair share and quotas, and a job that no
worker of its pool could ever hold is refused naming `resources.devices`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from common import state
from common.db import session_scope
from common.models import Job, JobRun, Worker
from common.scheduling import placement
from common.scheduling.claim import claim_next
from common.scheduling.usage import gpu_seconds_in_window
from common.settings import Settings, get_settings
from tests.support.factories import make_job_row, make_tenant
from worker.capabilities import local_devices

GIB = 2**30


def cpu_worker(devices: int) -> placement.Device:
    """This host's CPU as a worker started with TUNEQUEUE_WORKER_DEVICES=`devices` declares it."""
    found = local_devices(Settings(worker_devices=devices, cpu_memory_budget_mb=16 * 1024))
    assert [d.kind for d in found] == ["cpu"], "these tests run on a CPU host"
    return found[0]


def job_needing(tenant: str, pool: str, devices: int, *, cpu_bytes: int = GIB, minutes_ago: int = 0,
                user: str = "default") -> str:
    job_id = make_job_row(tenant, queue=pool, created_at=state.now() - timedelta(minutes=minutes_ago),
                          user_name=user)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        job.needs_devices, job.needs_cpu_bytes = devices, cpu_bytes
        job.spec = {**job.spec, "resources": {"devices": devices}}
    return job_id


def claim(pool: str, device: placement.Device, worker: str) -> str | None:
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker=worker, settings=get_settings(), fit=placement.Fit.of(device))
    return got[0] if got else None


def test_a_cpu_worker_declares_the_devices_its_setting_names_and_registers_them(pool) -> None:  # type: ignore[no-untyped-def]
    assert cpu_worker(1).devices == 1 and cpu_worker(2).devices == 2
    assert Settings().worker_devices == 1, "one device unless the setting says otherwise"
    with session_scope() as session:
        placement.register(session, pool, [cpu_worker(2)], state.now())
    with session_scope() as session:
        assert [w.devices for w in session.scalars(select(Worker).where(Worker.queue == pool))] == [2]


def test_a_two_device_job_is_left_by_a_one_device_worker_and_claimed_by_a_two_device_worker(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    two = job_needing(tenant, pool, 2, minutes_ago=5)  # older: the policy would pick it first
    one = job_needing(tenant, pool, 1, user="solo")
    assert claim(pool, cpu_worker(1), "host-a:1") == one, "the 1-device worker takes the job it can run"
    assert claim(pool, cpu_worker(1), "host-a:1") is None, "and never the 2-device one"
    assert claim(pool, cpu_worker(2), "host-b:1") == two
    with session_scope() as session:
        run = session.scalars(select(JobRun).where(JobRun.job_id == two)).one()
        job = session.get_one(Job, two)
        assert (run.devices, job.status, job.worker) == (2, "running", "host-b:1")
        # fair share and the gpu_hours quota count device-seconds: the run counts twice per second
        used = gpu_seconds_in_window(session, tenant, now=run.started_at + timedelta(seconds=10),
                                     window=timedelta(days=1))
    assert used["default"] == pytest.approx(2 * 10, abs=1e-3)  # its 10 s on 2 devices


def test_on_a_cpu_the_ranks_of_a_job_share_the_memory_budget(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    job = job_needing(tenant, pool, 2, cpu_bytes=6 * GIB)  # 12 GiB for its two ranks
    tight = placement.Device(**{**cpu_worker(2).__dict__, "memory_bytes": 8 * GIB})
    assert claim(pool, tight, "host-a:1") is None, "6 GiB fits 8, but two ranks of 6 do not"
    assert claim(pool, cpu_worker(2), "host-b:1") == job  # 16 GiB


@pytest.mark.usefixtures("tiny_model")
def test_a_job_needing_more_devices_than_any_worker_of_the_pool_has_is_refused_naming_the_field(pool) -> None:  # type: ignore[no-untyped-def]
    from common.schemas.job_spec import JobSpec, stored_spec, training_spec

    with session_scope() as session:
        placement.register(session, pool, [placement.Device(**{**cpu_worker(1).__dict__, "id": "host-a:cpu"}),
                                           placement.Device(**{**cpu_worker(2).__dict__, "id": "host-b:cpu"})],
                           state.now())
    body = {"base_model": "tiny-llama", "training_file": "file-x", "resources": {"devices": 3},
            "hyperparameters": {"batch_size": 3}}
    needs = placement.needs_of(get_settings(), training_spec(stored_spec(JobSpec.model_validate(body), 16)),
                               auto_batch=False)
    assert needs is not None and needs.devices == 3
    for what in (needs, None):  # with the estimate, and where the base model's config is not on this host
        with session_scope() as session, pytest.raises(placement.InsufficientResources) as refused:
            placement.place(session, pool, what, devices=3)
        assert refused.value.code == "insufficient_resources" and refused.value.param == "resources.devices"
        assert "needs 3 devices on one worker" in refused.value.message
        assert "has 2 (cpu, host-b:cpu)" in refused.value.message, refused.value.message
    two = placement.needs_of(get_settings(), training_spec(stored_spec(JobSpec.model_validate(
        {**body, "resources": {"devices": 2}, "hyperparameters": {"batch_size": 2}}), 16)), auto_batch=False)
    with session_scope() as session:
        assert placement.place(session, pool, two, devices=2) is None, "host-b can run a 2-device job"
