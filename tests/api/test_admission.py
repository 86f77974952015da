"""Admission (api/admission.py): while every database slot of a worker is taken, a request waits at most
TUNEQUEUE_DB_ADMISSION_TIMEOUT_SECONDS, then gets 503 `server_busy` with Retry-After in OpenAI's error shape; a
route that needs no database still answers; and the worker serves normally once a slot frees."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.settings import get_settings
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import assert_error, auth

WAIT = 0.3


@pytest.fixture
def saturable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An app of its own (its own event loop, so its own admission), with a short wait and the key cache on."""
    from api.main import create_app

    monkeypatch.setattr(get_settings(), "db_admission_timeout_seconds", WAIT)
    monkeypatch.setattr(get_settings(), "key_cache_seconds", 60.0)
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


async def _take_every_slot() -> int:
    from api.admission import get_admission

    admission = get_admission()
    for _ in range(admission.limit):
        await admission.acquire()
    return admission.limit


async def _free_every_slot() -> None:
    from api.admission import get_admission

    admission = get_admission()
    for _ in range(admission.limit):
        admission.release()


def test_saturated_worker_answers_503_server_busy_with_retry_after_then_serves_once_free(
        saturable: Any) -> None:
    tenant_id, key = make_tenant()
    job_id = make_job_row(tenant_id)
    assert saturable.get(f"/jobs/{job_id}", headers=auth(key)).status_code == 200  # the key is cached now
    assert saturable.portal is not None
    assert saturable.portal.call(_take_every_slot) == get_settings().db_concurrency
    try:
        for method, path in (("get", f"/jobs/{job_id}"), ("get", "/jobs"), ("get", "/files"),
                             ("post", f"/jobs/{job_id}/cancel")):
            resp = getattr(saturable, method)(path, headers=auth(key))
            err = assert_error(resp, 503, "server_busy")
            assert err["type"] == "server_error"
            assert "busy" in err["message"] and "Retry-After" in err["message"]
            assert int(resp.headers["retry-after"]) >= 1
        assert saturable.get("/healthz").status_code == 200  # no database, no slot
    finally:
        saturable.portal.call(_free_every_slot)
    assert saturable.get(f"/jobs/{job_id}", headers=auth(key)).status_code == 200


def test_saturated_worker_refuses_an_uncached_key_with_503_not_401(saturable: Any) -> None:
    _, key = make_tenant()
    assert saturable.portal is not None
    saturable.portal.call(_take_every_slot)
    try:
        assert_error(saturable.get("/jobs", headers=auth(key)), 503, "server_busy")
    finally:
        saturable.portal.call(_free_every_slot)
    assert saturable.get("/jobs", headers=auth(key)).status_code == 200
