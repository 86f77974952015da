"""When will it start: the projection of the queue under the real policy (common/scheduling/projection.py) and
its refresh from Postgres into `queue_position` / `estimated_start_at` (common/scheduling/forecast.py), shown on the
job object."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from common import state
from common.db import session_scope
from common.models import Job, Worker
from common.scheduling import forecast, placement
from common.scheduling.policy import Aging, Candidate, Weighing
from common.scheduling.projection import Projected, Slot, project
from common.settings import get_settings
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import auth as bearer

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
AGING = Aging(tenant_seconds=4 * 3600, priority_seconds=2 * 3600)
NOBODY = Weighing(tenant_use={}, user_use={}, weights={})


def job(job_id: str, tenant: str, minutes_ago: int) -> Candidate:
    return Candidate(job_id, tenant, "default", 1, NOW - timedelta(minutes=minutes_ago))


def in_order(got: dict[str, Projected]) -> list[str]:
    return [j for j, _ in sorted(got.items(), key=lambda kv: kv[1].position)]


def test_a_tenants_one_job_is_projected_second_behind_another_tenants_four_with_starts_a_run_apart() -> None:
    queued = [job(f"a{i}", "A", 40 - i) for i in range(4)] + [job("b", "B", 30)]
    got = project(queued, NOBODY, AGING, NOW, workers=[Slot(NOW)], run_seconds=600)
    assert in_order(got) == ["a0", "b", "a1", "a2", "a3"]
    assert [got[j].start_at for j in ("a0", "b", "a1")] == [NOW, NOW + timedelta(minutes=10),
                                                             NOW + timedelta(minutes=20)]


def test_the_first_start_waits_for_the_running_job_to_end_and_two_workers_start_two_at_once() -> None:
    queued = [job("x", "A", 5), job("y", "B", 4), job("z", "A", 3)]
    busy = project(queued, NOBODY, AGING, NOW, workers=[Slot(NOW + timedelta(minutes=7))], run_seconds=600)
    assert busy["x"].start_at == NOW + timedelta(minutes=7)
    two = project(queued, NOBODY, AGING, NOW, workers=[Slot(NOW), Slot(NOW)], run_seconds=600)
    assert two["x"].start_at == two["y"].start_at == NOW and two["z"].start_at == NOW + timedelta(minutes=10)


def test_only_the_first_jobs_up_to_the_limit_are_projected() -> None:
    queued = [job(f"j{i}", "A", 100 - i) for i in range(10)]
    assert len(project(queued, NOBODY, AGING, NOW, workers=[Slot(NOW)], run_seconds=60, limit=3)) == 3


def test_a_two_device_job_waits_for_the_two_device_worker_while_one_device_jobs_flow_through_the_other() -> None:
    queued = [job("big", "A", 50), job("a1", "A", 40), job("a2", "A", 39), job("a3", "A", 38)]
    workers = [Slot(NOW, devices=1), Slot(NOW + timedelta(minutes=20), devices=2)]  # the larger one is busy
    got = project(queued, NOBODY, AGING, NOW, workers=workers, run_seconds=600, needs_devices={"big": 2})
    assert {j: got[j].start_at - NOW for j in got} == {
        "a1": timedelta(0), "a2": timedelta(minutes=10), "a3": timedelta(minutes=20), "big": timedelta(minutes=20)}
    assert in_order(got) == ["a1", "a2", "a3", "big"]


def test_a_worker_runs_one_job_at_a_time_whatever_its_devices() -> None:
    queued = [job("x", "A", 5), job("y", "B", 4)]
    got = project(queued, NOBODY, AGING, NOW, workers=[Slot(NOW, devices=4)], run_seconds=600)
    assert [got[j].start_at for j in ("x", "y")] == [NOW, NOW + timedelta(minutes=10)]


def test_a_job_needing_more_devices_than_any_worker_is_not_projected_and_the_jobs_behind_it_are() -> None:
    queued = [job("big", "A", 10), job("a1", "A", 5), job("b1", "B", 4)]
    got = project(queued, NOBODY, AGING, NOW, workers=[Slot(NOW)], run_seconds=600, needs_devices={"big": 2})
    assert in_order(got) == ["a1", "b1"] and got["a1"].start_at == NOW


def test_a_hosts_gpu_rows_count_as_its_workers_and_a_running_job_holds_a_worker_of_its_own_host() -> None:
    # gpu-host: a worker of 2 GPUs (two rows saying 2) and one of 1; cpu-host: a CPU worker declaring 4
    workers = forecast.workers_of([("gpu-host", 2), ("gpu-host", 2), ("gpu-host", 1), ("cpu-host", 4)])
    assert workers == [("cpu-host", 4), ("gpu-host", 1), ("gpu-host", 2)]
    later, last = NOW + timedelta(minutes=9), NOW + timedelta(minutes=20)
    slots = forecast.slots(workers, [("cpu-host", 1, later), ("gpu-host", 1, last)], NOW)
    assert sorted((s.free_at, s.devices) for s in slots) == [(NOW, 2), (later, 4), (last, 1)]
    slots = forecast.slots(workers, [("gpu-host", 2, later), ("gpu-host", 1, last)], NOW)
    assert sorted((s.free_at, s.devices) for s in slots) == [(NOW, 4), (later, 2), (last, 1)]
    gone = forecast.slots(workers, [("old-host", 8, later)], NOW)  # its worker no longer registers
    assert sorted((s.free_at, s.devices) for s in gone) == [(NOW, 1), (NOW, 2), (NOW, 4), (later, 8)]


def test_a_refresh_stores_positions_under_the_policy_that_the_job_object_shows(client) -> None:  # type: ignore[no-untyped-def]
    pool = f"tunequeue.test.pool.{secrets.token_hex(4)}"
    settings = get_settings().model_copy(update={"celery_queue": pool})
    (a, a_key), (b, b_key) = make_tenant(), make_tenant()
    a_jobs = [make_job_row(a, queue=pool, created_at=state.now() - timedelta(minutes=40 - i)) for i in range(3)]
    b_job = make_job_row(b, queue=pool, created_at=state.now() - timedelta(minutes=30))
    device = placement.Device(id=f"test-projection-{secrets.token_hex(3)}:cpu", host="h", kind="cpu",
                              device_name="cpu", memory_bytes=2**34, compute_capability=None, bf16=False,
                              bitsandbytes=False, flash_attention=False)
    try:
        with session_scope() as session:
            placement.register(session, pool, [device], state.now())
            assert forecast.refresh(session, settings, state.now()) == 4
        shown = client.get(f"/jobs/{b_job}", headers=bearer(b_key)).json()
        assert shown["queue_position"] == 2
        assert shown["estimated_start_at"] - int(state.now().timestamp()) in range(1790, 1810)  # one default run
        assert client.get(f"/jobs/{a_jobs[1]}", headers=bearer(a_key)).json()["queue_position"] == 3
        with session_scope() as session:
            session.get_one(Job, a_jobs[0]).status = "cancelled"
        with session_scope() as session:
            forecast.refresh(session, settings, state.now())
        # A's first job never ran, so A has still not been served: its next job leads, B's stays second
        assert client.get(f"/jobs/{a_jobs[1]}", headers=bearer(a_key)).json()["queue_position"] == 1
        assert client.get(f"/jobs/{b_job}", headers=bearer(b_key)).json()["queue_position"] == 2
    finally:
        with session_scope() as session:
            session.execute(delete(Worker).where(Worker.id == device.id))


def test_a_refresh_counts_a_two_gpu_worker_as_one_slot_that_alone_takes_the_two_device_job(client) -> None:  # type: ignore[no-untyped-def]
    pool = f"tunequeue.test.pool.{secrets.token_hex(4)}"
    settings = get_settings().model_copy(update={"celery_queue": pool})
    tenant, key = make_tenant()
    host = f"test-projection-{secrets.token_hex(3)}"
    gpus = [placement.Device(id=f"{host}:{i}", host=host, kind="cuda", device_name="Test GPU", memory_bytes=2**36,
                             compute_capability="9.0", bf16=True, bitsandbytes=False, flash_attention=False,
                             devices=2) for i in (0, 1)]  # one worker with two GPUs visible: a row per GPU
    cpu = placement.Device(id=f"{host}-cpu:cpu", host=f"{host}-cpu", kind="cpu", device_name="cpu",
                           memory_bytes=2**34, compute_capability=None, bf16=False, bitsandbytes=False,
                           flash_attention=False)
    running, big, one, two = (make_job_row(tenant, queue=pool, created_at=state.now() - timedelta(minutes=40 - i))
                              for i in range(4))
    try:
        with session_scope() as session:
            placement.register(session, pool, [*gpus, cpu], state.now())
            session.get_one(Job, big).needs_devices = 2
            assert state.claim(session, running, worker=f"{host}:4242", lease_seconds=60) == 1  # on the 2-GPU one
        with session_scope() as session:
            now = state.now()
            assert forecast.refresh(session, settings, now) == 3

        def shown(job_id: str) -> tuple[int, int]:
            got = client.get(f"/jobs/{job_id}", headers=bearer(key)).json()
            return got["queue_position"], round((got["estimated_start_at"] - now.timestamp()) / 60)  # whole seconds

        # The CPU worker passes over `big` (two devices) to `one`; when the running job ends (one default run,
        # 30 minutes: the 2-GPU worker and the CPU worker free up within a second) the CPU worker takes `two` and
        # the 2-GPU worker, the only one it fits, `big`.
        assert shown(one) == (1, 0)
        assert {shown(two), shown(big)} == {(2, 30), (3, 30)}
    finally:
        with session_scope() as session:
            session.execute(delete(Worker).where(Worker.queue == pool))
