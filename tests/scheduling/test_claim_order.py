"""The claim (common/scheduling/claim.py) against the real Postgres: which job a woken worker takes. Each test has a
worker pool (queue) of its own, so the jobs it weighs are the ones it made; history is written as `job_runs` rows."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from common import state
from common.db import session_scope
from common.models import JobRun, Tenant
from common.scheduling.claim import claim_next
from common.services.quotas import set_quotas
from common.settings import Settings, get_settings
from tests.support.factories import make_job_row, make_tenant
from tests.support.scheduling import record_run

HOUR = timedelta(hours=1)


@pytest.fixture
def pool() -> str:
    return f"tunequeue.test.pool.{secrets.token_hex(4)}"


def settings(**overrides: float) -> Settings:
    return get_settings().model_copy(update=overrides)


def claim(pool: str, now: datetime | None = None, **overrides: float) -> str | None:
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker="test-host:1", settings=settings(**overrides), now=now)
    return got[0] if got else None


def job(tenant: str, pool: str, *, ago: timedelta = timedelta(0), user: str = "default", priority: int = 1) -> str:
    return make_job_row(tenant, queue=pool, user_name=user, priority=priority, created_at=state.now() - ago)


def test_a_tenant_that_submitted_one_job_after_another_tenants_four_runs_second(pool) -> None:  # type: ignore[no-untyped-def]
    a, b = make_tenant()[0], make_tenant()[0]
    a_jobs = [job(a, pool, ago=timedelta(seconds=40 - i)) for i in range(4)]
    b_job = job(b, pool, ago=timedelta(seconds=30))
    assert claim(pool) == a_jobs[0]  # nobody has used anything: the oldest tenant's oldest job
    assert claim(pool, now=state.now() + timedelta(minutes=5)) == b_job  # A has used the GPU since; B has not
    assert [claim(pool, now=state.now() + timedelta(minutes=10)) for _ in range(3)] == a_jobs[1:]
    assert claim(pool) is None


def test_the_tenant_with_less_decayed_use_goes_first_whatever_the_order_of_submission(pool) -> None:  # type: ignore[no-untyped-def]
    heavy, light = make_tenant()[0], make_tenant()[0]
    record_run(heavy, 3.0)
    record_run(light, 1.0)
    heavy_job = job(heavy, pool, ago=timedelta(minutes=30))
    light_job = job(light, pool)
    assert claim(pool) == light_job
    assert claim(pool) == heavy_job


def test_use_decays_so_old_use_counts_less_than_recent_use(pool) -> None:  # type: ignore[no-untyped-def]
    old_heavy, recent_light = make_tenant()[0], make_tenant()[0]
    record_run(old_heavy, 4.0, ended_ago=timedelta(hours=16))  # four half-lives ago: counts as about a quarter hour
    record_run(recent_light, 1.0)
    first = job(recent_light, pool, ago=timedelta(minutes=10))
    second = job(old_heavy, pool)
    assert claim(pool) == second
    assert claim(pool) == first


def test_a_tenant_with_three_times_the_weight_goes_first_at_twice_the_use(pool) -> None:  # type: ignore[no-untyped-def]
    big, small = make_tenant()[0], make_tenant()[0]
    with session_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == big).values(weight=3.0))
    record_run(big, 2.0)
    record_run(small, 1.0)
    small_job = job(small, pool, ago=timedelta(minutes=10))
    big_job = job(big, pool)
    assert claim(pool) == big_job  # 2/3 of the use for 3/4 of the weight: below its share
    assert claim(pool) == small_job


def test_priority_orders_the_jobs_of_one_tenant(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    low = job(tenant, pool, ago=timedelta(minutes=3), priority=0)
    normal = job(tenant, pool, ago=timedelta(minutes=2), priority=1)
    high = job(tenant, pool, ago=timedelta(minutes=1), priority=2)
    assert [claim(pool) for _ in range(3)] == [high, normal, low]


def test_priority_does_not_put_a_tenant_ahead_of_one_below_its_fair_share(pool) -> None:  # type: ignore[no-untyped-def]
    rich, poor = make_tenant()[0], make_tenant()[0]
    record_run(rich, 1.0)
    rich_high = job(rich, pool, ago=timedelta(minutes=5), priority=2)
    poor_low = job(poor, pool, priority=0)
    assert claim(pool) == poor_low
    assert claim(pool) == rich_high


def test_a_low_job_that_waited_twice_the_priority_aging_goes_before_a_new_high_one(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    aged_low = job(tenant, pool, ago=2 * HOUR + timedelta(minutes=1), priority=0)
    high = job(tenant, pool, priority=2)
    assert claim(pool, priority_aging_hours=1.0) == aged_low
    assert claim(pool, priority_aging_hours=1.0) == high


def test_a_low_job_that_waited_less_than_twice_the_priority_aging_stays_behind_a_new_high_one(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    low = job(tenant, pool, ago=2 * HOUR - timedelta(minutes=1), priority=0)
    high = job(tenant, pool, priority=2)
    assert claim(pool, priority_aging_hours=1.0) == high
    assert claim(pool, priority_aging_hours=1.0) == low


def test_a_tenant_whose_oldest_job_waited_long_enough_goes_first_despite_its_use(pool) -> None:  # type: ignore[no-untyped-def]
    """Two tenants, equal weights: a tenant's key is at most 2 above the other's; it falls by one per tenant aging
    waited, so more than two tenant-agings of extra waiting wins."""
    heavy, light = make_tenant()[0], make_tenant()[0]
    record_run(heavy, 5.0)
    starved = job(heavy, pool, ago=2 * HOUR + timedelta(minutes=5))
    fresh = job(light, pool)
    assert claim(pool, tenant_aging_hours=1.0) == starved
    assert claim(pool, tenant_aging_hours=1.0) == fresh


def test_a_backlog_earns_its_tenant_no_age_while_the_tenant_is_being_served(pool) -> None:  # type: ignore[no-untyped-def]
    """The sweep's oldest job has waited ten hours, but its tenant started a job in this pool a minute ago: it has
    not gone unserved, so the other tenant's fresh job still goes first."""
    sweeping, other = make_tenant()[0], make_tenant()[0]
    record_run(sweeping, 0.5, ended_ago=timedelta(minutes=1) - timedelta(hours=0.5), queue=pool)  # started 1 min ago
    backlog = job(sweeping, pool, ago=10 * HOUR)
    fresh = job(other, pool)
    assert claim(pool, tenant_aging_hours=1.0) == fresh
    assert claim(pool, tenant_aging_hours=1.0) == backlog


def test_within_a_tenant_the_user_with_less_use_goes_first(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    record_run(tenant, 2.0, user="alice")
    alice = job(tenant, pool, ago=timedelta(minutes=20), user="alice")
    bob = job(tenant, pool, user="bob")
    assert claim(pool) == bob
    assert claim(pool) == alice


def test_a_tenant_at_its_max_running_is_passed_over_until_one_of_its_jobs_ends(pool) -> None:  # type: ignore[no-untyped-def]
    capped, other = make_tenant()[0], make_tenant()[0]
    with session_scope() as session:
        set_quotas(session, capped, {"max_running": 1})
    first, second = job(capped, pool, ago=timedelta(minutes=9)), job(capped, pool, ago=timedelta(minutes=8))
    other_job = job(other, pool)
    assert claim(pool) == first
    assert claim(pool) == other_job
    assert claim(pool) is None  # `second` waits: its tenant runs its one job
    with session_scope() as session:
        attempt = session.scalar(select(JobRun.attempt).where(JobRun.job_id == first))
        assert state.finish(session, first, attempt or 0, "succeeded")
    assert claim(pool) == second


def test_a_worker_claims_only_jobs_of_its_own_pool(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    job(tenant, f"{pool}.other")
    assert claim(pool) is None


def test_a_cancelled_job_is_not_claimed(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    cancelled = job(tenant, pool, ago=timedelta(minutes=1))
    kept = job(tenant, pool)
    with session_scope() as session:
        state.request_cancel(session, state.lock_job(session, cancelled))  # type: ignore[arg-type]
    assert claim(pool) == kept
