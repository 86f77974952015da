"""The quotas beyond max_queued (common/services/quotas.py) and GET /usage, over the API and the CLI: gpu_hours (a
rolling 30 days of `job_runs`, 429 at POST /jobs and held back at the claim), storage_gb (429 at POST /files, and the
refused upload leaves no bytes), max_running on GET /quota, and job priority (high takes an admin key)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cli.main import main as cli
from common import state
from common.db import session_scope
from common.models import Tenant
from common.scheduling.claim import claim_next
from common.services.quotas import set_quotas
from common.settings import get_settings
from tests.support.environment import ROOT
from tests.support.factories import chat_rows, jsonl, make_job_row, make_tenant, spec, upload
from tests.support.http import assert_error
from tests.support.http import auth as bearer
from tests.support.scheduling import record_run


def _file(client: Any, key: str) -> str:
    up = upload(client, key, jsonl(chat_rows(8)))
    assert up.status_code == 200, up.text
    file_id: str = up.json()["id"]
    return file_id


def _quota(tenant_id: str, **values: float | None) -> None:
    with session_scope() as session:
        set_quotas(session, tenant_id, values)


def test_get_usage_counts_each_users_gpu_hours_inside_the_rolling_30_days_only(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    record_run(tenant_id, 1.5, user="alice")
    record_run(tenant_id, 0.5, user="bob", ended_ago=timedelta(days=3))
    record_run(tenant_id, 4.0, user="bob", ended_ago=timedelta(days=31))  # outside the window: not counted
    record_run(tenant_id, 10.0, user="carol", ended_ago=timedelta(days=30) - timedelta(hours=2))  # 2 h inside
    _quota(tenant_id, gpu_hours=100)
    body = client.get("/usage", headers=bearer(key)).json()
    assert body["window_days"] == 30 and body["gpu_hours_limit"] == 100
    assert [(u["user"], round(u["gpu_hours"], 2)) for u in body["users"]] == [
        ("carol", 2.0), ("alice", 1.5), ("bob", 0.5)]
    assert round(body["gpu_hours"], 2) == 4.0
    assert client.get("/usage", headers=bearer(make_tenant()[1])).json()["users"] == [], "another tenant's is its own"


def test_at_its_gpu_hours_a_tenant_gets_429_at_submission_and_its_queued_jobs_are_held_back(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    other = make_tenant()[0]
    file_id = _file(client, key)
    record_run(tenant_id, 2.0)
    _quota(tenant_id, gpu_hours=3)
    assert client.post("/jobs", json=spec(file_id), headers=bearer(key)).status_code == 200, "2 of 3 hours used"
    pool = f"tunequeue.test.pool.{secrets.token_hex(4)}"
    held = make_job_row(tenant_id, queue=pool)
    record_run(tenant_id, 1.0)
    err = assert_error(client.post("/jobs", json=spec(file_id), headers=bearer(key)), 429, "quota_exceeded")
    assert "3 GPU-hours in any 30 days" in err["message"] and "has used 3.00" in err["message"]
    other_job = make_job_row(other, queue=pool)
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker="test-host:1", settings=get_settings())
    assert got is not None and got[0] == other_job
    with session_scope() as session:
        assert claim_next(session, queue=pool, worker="test-host:1", settings=get_settings()) is None, held
    _quota(tenant_id, gpu_hours=None)
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker="test-host:1", settings=get_settings())
    assert got is not None and got[0] == held


def _stored_files(tenant_id: str) -> list[Path]:
    return [p for p in (ROOT / "artifacts").rglob("*") if p.is_file() and tenant_id in str(p)]


def test_an_upload_over_storage_gb_is_429_and_leaves_no_bytes_or_row(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    first = _file(client, key)
    stored = client.get(f"/files/{first}", headers=bearer(key)).json()["bytes"] / 10**9
    assert client.get("/quota", headers=bearer(key)).json()["usage"]["storage_gb"] == round(stored, 9)
    _quota(tenant_id, storage_gb=stored * 1.5)  # room for half a file more
    before = _stored_files(tenant_id)
    err = assert_error(upload(client, key, jsonl(chat_rows(8))), 429, "quota_exceeded", param="file")
    assert "may store" in err["message"] and "Delete files" in err["message"]
    assert _stored_files(tenant_id) == before
    assert [f["id"] for f in client.get("/files", headers=bearer(key)).json()["data"]] == [first]
    _quota(tenant_id, storage_gb=stored * 2.5)
    assert upload(client, key, jsonl(chat_rows(8))).status_code == 200


def test_get_quota_shows_every_limit_and_the_running_jobs_against_max_running(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    _, operator = make_tenant(role="operator")
    make_job_row(tenant_id, "running")
    body = client.put(f"/tenants/{tenant_id}/quota", json={"max_running": 2, "max_job_hours": 1.5},
                      headers=bearer(operator)).json()
    assert body["limits"] == {"max_running": 2, "max_queued": None, "gpu_hours": None, "max_job_hours": 1.5,
                              "storage_gb": None}
    assert body["usage"]["max_running"] == 1


def test_the_cli_sets_hour_and_gb_quotas_and_refuses_negative_ones(capsys) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, tenant_id).name
    assert cli(["admin", "set-quota", name, "--gpu-hours", "1.5", "--max-running", "2", "--storage-gb", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {"gpu_hours: 1.5 (in use: 0.0)", "max_running: 2 (in use: 0)",
            "storage_gb: 10.0 (in use: 0.0)"} <= set(lines)
    for option, bad in (("--gpu-hours", "-1"), ("--storage-gb", "lots"), ("--max-job-hours", "nan")):
        with pytest.raises(SystemExit) as exited:
            cli(["admin", "set-quota", name, option, bad])
        assert exited.value.code == 2 and option in capsys.readouterr().err


def test_priority_high_takes_an_admin_key_and_the_job_shows_its_priority(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, member = make_tenant()
    with session_scope() as session:
        from common import auth

        _, admin = auth.create_key(session, session.get_one(Tenant, tenant_id), role="admin")
    file_id = _file(client, member)
    assert client.post("/jobs", json=spec(file_id), headers=bearer(member)).json()["priority"] == "normal"
    assert client.post("/jobs", json=spec(file_id, priority="low"), headers=bearer(member)).json()["priority"] == "low"
    err = assert_error(client.post("/jobs", json=spec(file_id, priority="high"), headers=bearer(member)), 403,
                       "permission_denied", param="priority")
    assert "admin" in err["message"]
    assert client.post("/jobs", json=spec(file_id, priority="high"), headers=bearer(admin)).json()["priority"] == "high"
    assert_error(client.post("/jobs", json=spec(file_id, priority="urgent"), headers=bearer(admin)), 422,
                 param="priority")


def test_the_operator_sets_a_tenants_weight_which_the_claim_weighs_and_null_restores_one(client) -> None:  # type: ignore[no-untyped-def]
    heavy, key = make_tenant()
    light = make_tenant()[0]
    _, operator = make_tenant(role="operator")
    assert client.get("/quota", headers=bearer(key)).json()["weight"] == 1.0
    body = client.put(f"/tenants/{heavy}/quota", json={"weight": 3}, headers=bearer(operator)).json()
    assert body["weight"] == 3.0 and body["limits"]["max_queued"] is None, "a weight is not a quota"
    record_run(heavy, 2.0)
    record_run(light, 1.0)
    pool = f"tunequeue.test.pool.{secrets.token_hex(4)}"
    make_job_row(light, queue=pool, created_at=state.now() - timedelta(minutes=10))
    heavy_job = make_job_row(heavy, queue=pool)
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker="test-host:1", settings=get_settings())
    assert got is not None and got[0] == heavy_job, "2/3 of the use for 3/4 of the weight: below its share"
    assert client.put(f"/tenants/{heavy}/quota", json={"weight": None},
                      headers=bearer(operator)).json()["weight"] == 1.0
    for bad in (0, -1, 1001, "much"):
        assert_error(client.put(f"/tenants/{heavy}/quota", json={"weight": bad}, headers=bearer(operator)), 422,
                     param="weight")


def test_the_cli_sets_a_weight_and_refuses_one_that_is_not_above_zero(capsys) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, tenant_id).name
    assert cli(["admin", "set-quota", name, "--weight", "2.5"]) == 0
    assert "weight: 2.5" in capsys.readouterr().out.splitlines()
    with session_scope() as session:
        assert session.get_one(Tenant, tenant_id).weight == 2.5
    for bad in ("0", "-2", "heavy"):
        with pytest.raises(SystemExit) as exited:
            cli(["admin", "set-quota", name, "--weight", bad])
        assert exited.value.code == 2 and "--weight" in capsys.readouterr().err
