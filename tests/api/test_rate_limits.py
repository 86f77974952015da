"""Requests per minute per API key (api/rate_limits.py), counted in the real Redis: over the limit a key gets
`429 rate_limit_exceeded` with Retry-After, another key (of the same tenant or another) is unaffected, the health
probes are not counted, and a Redis that does not answer lets requests through."""

from __future__ import annotations

import pytest

from common.settings import get_settings
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth
from tests.support.servers import free_port

LIMIT = 5


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(get_settings(), "rate_limit_per_minute", LIMIT)
    return LIMIT


def test_a_key_over_its_limit_gets_429_with_retry_after_and_another_key_is_unaffected(client, limited) -> None:  # type: ignore[no-untyped-def]
    _, busy = make_tenant()
    _, other = make_tenant()
    for _ in range(limited):
        assert client.get("/jobs", headers=auth(busy)).status_code == 200
    refused = client.get("/jobs", headers=auth(busy))
    err = assert_error(refused, 429, "rate_limit_exceeded")
    assert err["type"] == "rate_limit_error" and "TUNEQUEUE_RATE_LIMIT_PER_MINUTE" in err["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 120
    assert_error(client.post("/jobs", json={}, headers=auth(busy)), 429, "rate_limit_exceeded")  # every route
    assert client.get("/jobs", headers=auth(other)).status_code == 200, "another tenant's key has its own budget"


def test_each_key_of_one_tenant_has_its_own_budget(client, limited) -> None:  # type: ignore[no-untyped-def]
    from common.auth import create_key
    from common.db import session_scope
    from common.models import Tenant

    tenant_id, first = make_tenant()
    with session_scope() as session:
        _, second = create_key(session, session.get_one(Tenant, tenant_id))
    for _ in range(limited):
        client.get("/jobs", headers=auth(first))
    assert_error(client.get("/jobs", headers=auth(first)), 429, "rate_limit_exceeded")
    assert client.get("/jobs", headers=auth(second)).status_code == 200


def test_health_probes_and_unauthenticated_requests_are_not_counted(client, limited) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    for _ in range(limited * 2):
        assert client.get("/healthz", headers=auth(key)).status_code == 200
        assert client.get("/readyz", headers=auth(key)).status_code == 200
    assert_error(client.get("/jobs", headers=auth("tq-not-a-key")), 401, "invalid_api_key")
    for _ in range(limited):
        assert client.get("/jobs", headers=auth(key)).status_code == 200, "the probes did not use the key's budget"
    assert_error(client.get("/jobs", headers=auth(key)), 429, "rate_limit_exceeded")
    assert client.get("/healthz", headers=auth(key)).status_code == 200, "nor are they refused past it"


def test_a_redis_that_does_not_answer_lets_requests_through_and_says_so(client, limited, monkeypatch,  # type: ignore[no-untyped-def]
                                                                         caplog) -> None:
    from api import rate_limits

    monkeypatch.setattr(rate_limits, "_last_logged", {})
    _, key = make_tenant()
    monkeypatch.setattr(get_settings(), "redis_url", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    with caplog.at_level("WARNING", logger="tunequeue.api.rate_limits"):
        for _ in range(limited * 2):
            assert client.get("/jobs", headers=auth(key)).status_code == 200
    assert [r for r in caplog.records if "request rate" in r.getMessage()], "the outage is logged"
