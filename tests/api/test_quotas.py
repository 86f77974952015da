"""Quotas (issue 14, "Quotas"; common/services/quotas.py): the platform operator sets a tenant's `max_queued` (CLI
`tunequeue admin set-quota`, `PUT /tenants/{id}/quota`); at the cap `POST /jobs` is 429 `quota_exceeded` naming the
limit, the use and what frees a place; a replayed Idempotency-Key still gets its job; cancelling frees a place;
another tenant is not limited; the tenant sees its quota and use on `GET /quota`; bad values are refused."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from cli.main import main as cli
from cli.main import run
from common.db import session_scope
from common.models import Tenant
from tests.support.factories import chat_rows, jsonl, make_tenant, spec, upload
from tests.support.http import assert_error
from tests.support.http import auth as bearer

NO_LIMITS = {"max_running": None, "max_queued": None, "gpu_hours": None, "max_job_hours": None, "storage_gb": None}


def _file(client: Any, key: str) -> str:
    up = upload(client, key, jsonl(chat_rows(8)))
    assert up.status_code == 200, up.text
    file_id: str = up.json()["id"]
    return file_id


def _post(client: Any, key: str, file_id: str, idempotency_key: str | None = None) -> Any:
    headers = {**bearer(key), **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    return client.post("/jobs", json=spec(file_id), headers=headers)


def _set(client: Any, operator: str, tenant_id: str, body: dict[str, Any]) -> Any:
    return client.put(f"/tenants/{tenant_id}/quota", json=body, headers=bearer(operator))


def test_at_its_max_queued_a_tenant_gets_429_quota_exceeded_and_a_cancel_frees_a_place(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    _, operator = make_tenant(role="operator")
    _, other = make_tenant()
    set_ = _set(client, operator, tenant_id, {"max_queued": 2})
    assert set_.status_code == 200, set_.text
    assert set_.json()["limits"] == {**NO_LIMITS, "max_queued": 2} and set_.json()["usage"]["max_queued"] == 0
    file_id = _file(client, key)
    first = _post(client, key, file_id, "first")
    assert first.status_code == 200 and _post(client, key, file_id).status_code == 200

    err = assert_error(_post(client, key, file_id), 429, "quota_exceeded")
    assert "may have 2 jobs waiting" in err["message"] and "has 2" in err["message"] and "cancel" in err["message"]
    assert err["type"] == "rate_limit_error"
    replay = _post(client, key, file_id, "first")
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"], "a replay is not a new job"
    assert client.get("/quota", headers=bearer(key)).json()["usage"]["max_queued"] == 2

    assert client.post(f"/jobs/{first.json()['id']}/cancel", headers=bearer(key)).status_code == 200
    assert _post(client, key, file_id).status_code == 200, "a cancelled job's place is free again"
    other_file = _file(client, other)
    assert all(_post(client, other, other_file).status_code == 200 for _ in range(3)), "another tenant: no cap"
    assert client.get("/quota", headers=bearer(other)).json()["limits"] == NO_LIMITS


def test_a_quota_is_removed_with_null_and_a_limit_left_out_stays(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    _, operator = make_tenant(role="operator")
    assert _set(client, operator, tenant_id, {"max_queued": 0}).status_code == 200
    file_id = _file(client, key)
    assert_error(_post(client, key, file_id), 429, "quota_exceeded")
    assert _set(client, operator, tenant_id, {}).json()["limits"] == {**NO_LIMITS, "max_queued": 0}, \
        "nothing given: unchanged"
    assert _set(client, operator, tenant_id, {"max_queued": None}).json()["limits"] == NO_LIMITS
    assert _post(client, key, file_id).status_code == 200


def test_only_the_platform_operator_sets_quotas_and_bad_values_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, member = make_tenant()
    _, admin = make_tenant(role="admin")
    _, operator = make_tenant(role="operator")
    assert_error(_set(client, member, tenant_id, {"max_queued": 5}), 403, "permission_denied")
    assert_error(_set(client, admin, tenant_id, {"max_queued": 5}), 403, "permission_denied")
    assert_error(_set(client, operator, tenant_id, {"max_queued": -1}), 422, "invalid_value")
    assert_error(_set(client, operator, tenant_id, {"max_queued": "many"}), 422, "invalid_value")
    assert_error(_set(client, operator, tenant_id, {"gpu_hours": -0.5}), 422, "invalid_value")
    assert_error(_set(client, operator, tenant_id, {"max_running": 1.5}), 422, "invalid_value")
    assert_error(_set(client, operator, tenant_id, {"gpu_minutes": 5}), 422, "unknown_field")
    assert_error(_set(client, operator, "tenant-nope", {"max_queued": 5}), 404, "tenant_not_found")
    assert client.get("/quota", headers=bearer(member)).json()["limits"] == NO_LIMITS, "nothing was set"


def test_the_cli_sets_and_removes_a_quota_and_refuses_a_bad_value(client, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, tenant_id).name
    assert cli(["admin", "set-quota", name, "--max-queued", "1"]) == 0
    assert "max_queued: 1 (in use: 0)" in capsys.readouterr().out.splitlines()
    file_id = _file(client, key)
    assert _post(client, key, file_id).status_code == 200
    assert_error(_post(client, key, file_id), 429, "quota_exceeded")
    assert cli(["admin", "set-quota", name]) == 0, "no option: prints the quotas, changes nothing"
    assert "max_queued: 1 (in use: 1)" in capsys.readouterr().out.splitlines()
    assert cli(["admin", "set-quota", name, "--max-queued", "none"]) == 0
    assert "max_queued: no limit (in use: 1)" in capsys.readouterr().out.splitlines()
    assert _post(client, key, file_id).status_code == 200
    for bad in ("-3", "lots"):
        with pytest.raises(SystemExit) as exited:
            cli(["admin", "set-quota", name, "--max-queued", bad])
        assert exited.value.code == 2 and "--max-queued" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["tunequeue", "admin", "set-quota", "no-such-tenant", "--max-queued", "1"])
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 2 and "no tenant named 'no-such-tenant'" in capsys.readouterr().err


def test_two_submissions_at_once_cannot_both_take_the_last_place(client) -> None:  # type: ignore[no-untyped-def]
    """The count runs under a lock on the tenant's row: the second submission waits for the first's commit and
    then counts its job."""
    import threading

    from common.errors import QuotaExceeded
    from common.schemas.job_spec import JobSpec
    from common.services.jobs import create_job
    from common.services.quotas import set_quotas
    from common.settings import get_settings

    tenant_id, key = make_tenant()
    file_id = _file(client, key)
    with session_scope() as session:
        set_quotas(session, tenant_id, {"max_queued": 1})
    job_spec = JobSpec.model_validate(spec(file_id))
    outcome: list[str] = []
    first_inserted = threading.Event()

    def second() -> None:
        first_inserted.wait(10)
        try:
            with session_scope() as session:
                create_job(session, get_settings(), tenant_id=tenant_id, spec=job_spec)
            outcome.append("created")
        except QuotaExceeded:
            outcome.append("quota_exceeded")

    thread = threading.Thread(target=second)
    thread.start()
    with session_scope() as session:
        create_job(session, get_settings(), tenant_id=tenant_id, spec=job_spec)
        first_inserted.set()
        thread.join(0.5)
        assert thread.is_alive(), "the second submission waits while the first holds the tenant's row"
    thread.join(10)
    assert outcome == ["quota_exceeded"]
