"""docs/scheduling.md's worked example, computed by the policy itself (common/scheduling/policy.py): if the policy
changes, this fails until the example is redone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.scheduling.policy import Aging, Candidate, Weighing, choose, job_keys, tenant_keys

DAY = datetime(2026, 12, 1, tzinfo=UTC)
AGING = Aging(tenant_seconds=4 * 3600, priority_seconds=2 * 3600)


def at(hhmm: str) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return DAY.replace(hour=hours, minute=minutes)


ALICE_NORMAL = Candidate("alice-normal", "acme", "alice", 1, at("09:00"))
ALICE_HIGH = Candidate("alice-high", "acme", "alice", 2, at("09:50"))
BOB_LOW = Candidate("bob-low", "acme", "bob", 0, at("07:00"))
CAROL = Candidate("carol", "globex", "carol", 1, at("09:55"))
USE = Weighing(tenant_use={"acme": 3.0 * 3600, "globex": 1.0 * 3600},
               user_use={("acme", "alice"): 2.5 * 3600, ("acme", "bob"): 0.5 * 3600, ("globex", "carol"): 3600},
               weights={}, last_served={"acme": at("09:30"), "globex": at("06:00")})


def test_at_ten_globex_goes_first_with_the_keys_the_example_shows() -> None:
    everyone = [ALICE_NORMAL, ALICE_HIGH, BOB_LOW, CAROL]
    keys = tenant_keys(everyone, USE, AGING, at("10:00"))
    assert keys == {"acme": pytest.approx(1.375), "globex": pytest.approx(0.5 - 5 / 60 / 4)}
    assert choose(everyone, USE, AGING, at("10:00")) == CAROL


def test_at_eleven_bobs_low_job_then_alices_high_then_her_normal_one() -> None:
    acme = [ALICE_NORMAL, ALICE_HIGH, BOB_LOW]
    keys = job_keys(acme, USE, AGING, at("11:00"))
    assert keys == {"alice-normal": pytest.approx(1 / 3), "alice-high": pytest.approx(1 / 3 - 7 / 12),
                    "bob-low": pytest.approx(-1 / 3)}
    order = []
    while acme:
        best = choose(acme, USE, AGING, at("11:00"))
        assert best is not None
        order.append(best.job_id)
        acme = [c for c in acme if c != best]
    assert order == ["bob-low", "alice-high", "alice-normal"]
