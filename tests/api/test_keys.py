"""Key management (`/keys`, api/routes/keys.py; `tunequeue admin list-keys|revoke-key`): a tenant admin makes,
lists, rotates and revokes the tenant's keys; a key is shown once; it expires; `last_used_at` says it is used;
a revoked key's open event streams end; the operator role is the CLI's alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, update

from cli.main import main as cli
from common.auth import hash_key
from common.db import session_scope
from common.models import ApiKey, Tenant
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import assert_error, auth
from tests.support.servers import uvicorn_in_thread
from tests.support.sse import SseReader


@pytest.fixture
def admin() -> tuple[str, str]:
    return make_tenant(role="admin")


def _make(client: Any, key: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/keys", json=body, headers=auth(key))
    assert resp.status_code == 200, resp.text
    made: dict[str, Any] = resp.json()
    return made


def test_an_admin_makes_a_key_shown_once_that_works_and_the_list_never_shows_a_key(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _make(client, admin[1], name="ci runner", role="member")
    assert made["object"] == "api_key" and made["role"] == "member" and made["name"] == "ci runner"
    assert made["key"].startswith(made["prefix"]) and made["revoked_at"] is None and made["last_used_at"] is None
    assert client.get("/jobs", headers=auth(made["key"])).status_code == 200
    listed = client.get("/keys", headers=auth(admin[1]))
    assert listed.status_code == 200
    assert made["id"] in [k["id"] for k in listed.json()["data"]]
    assert made["key"] not in listed.text and all("key" not in k for k in listed.json()["data"])


def test_using_a_key_stamps_its_last_used_at(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _make(client, admin[1])
    before = time.time()
    assert client.get("/files", headers=auth(made["key"])).status_code == 200
    [row] = [k for k in client.get("/keys", headers=auth(admin[1])).json()["data"] if k["id"] == made["id"]]
    assert row["last_used_at"] is not None and row["last_used_at"] >= int(before) - 1


def test_a_member_key_may_not_manage_keys(client, tenant) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/keys", headers=auth(tenant[1])), 403, "permission_denied")
    assert_error(client.post("/keys", json={}, headers=auth(tenant[1])), 403, "permission_denied")
    assert_error(client.get("/keys"), 401)


def test_a_revoked_key_is_refused_at_once_and_a_key_cannot_revoke_itself(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _make(client, admin[1])
    assert client.get("/jobs", headers=auth(made["key"])).status_code == 200  # now in this worker's key cache
    revoked = client.delete(f"/keys/{made['id']}", headers=auth(admin[1]))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_error(client.get("/jobs", headers=auth(made["key"])), 401, "invalid_api_key")
    assert client.delete(f"/keys/{made['id']}", headers=auth(admin[1])).status_code == 200  # idempotent
    with session_scope() as session:
        own_id = session.query(ApiKey.id).filter(ApiKey.key_hash == hash_key(admin[1])).scalar()
    assert_error(client.delete(f"/keys/{own_id}", headers=auth(admin[1])), 400, "cannot_revoke_own_key", "key_id")


def test_another_tenants_key_is_not_found_to_list_revoke_or_rotate(client, admin) -> None:  # type: ignore[no-untyped-def]
    _, other_admin = make_tenant(role="admin")
    theirs = _make(client, other_admin)
    assert theirs["id"] not in [k["id"] for k in client.get("/keys", headers=auth(admin[1])).json()["data"]]
    assert_error(client.delete(f"/keys/{theirs['id']}", headers=auth(admin[1])), 404, "key_not_found", "key_id")
    assert_error(client.post(f"/keys/{theirs['id']}/rotate", headers=auth(admin[1])), 404, "key_not_found")
    assert client.get("/jobs", headers=auth(theirs["key"])).status_code == 200


def test_a_key_stops_working_at_its_expires_at_even_while_cached(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _make(client, admin[1], expires_at=int(time.time()) + 3)
    assert client.get("/jobs", headers=auth(made["key"])).status_code == 200
    deadline = made["expires_at"] + 1.5  # whole seconds, then the cache's entry ends with it
    while time.time() < deadline:
        time.sleep(0.25)
    assert_error(client.get("/jobs", headers=auth(made["key"])), 401, "invalid_api_key")


def test_rotating_without_grace_ends_the_old_key_and_the_new_one_keeps_name_and_role(client, admin) -> None:  # type: ignore[no-untyped-def]
    old = _make(client, admin[1], name="deploy", role="admin")
    new = client.post(f"/keys/{old['id']}/rotate", headers=auth(admin[1])).json()
    assert (new["name"], new["role"]) == ("deploy", "admin") and new["id"] != old["id"]
    assert_error(client.get("/jobs", headers=auth(old["key"])), 401, "invalid_api_key")
    assert client.get("/keys", headers=auth(new["key"])).status_code == 200


def test_rotating_with_grace_keeps_the_old_key_working_until_its_new_expiry(client, admin) -> None:  # type: ignore[no-untyped-def]
    old = _make(client, admin[1])
    before = time.time()
    new = client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=auth(admin[1])).json()
    assert client.get("/jobs", headers=auth(old["key"])).status_code == 200
    assert client.get("/jobs", headers=auth(new["key"])).status_code == 200
    [row] = [k for k in client.get("/keys", headers=auth(admin[1])).json()["data"] if k["id"] == old["id"]]
    assert before + 3600 - 2 <= row["expires_at"] <= time.time() + 3600 and row["revoked_at"] is None


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"role": "operator"}, 422, "role"),  # the platform's role: the CLI's alone
    ({"name": "bad\x00name"}, 400, "name"),
    ({"name": "two\nlines"}, 400, "name"),
    ({"name": "x" * 129}, 422, "name"),
    ({"expires_at": 0}, 422, "expires_at"),
    ({"expires_at": 41095485 * 31_557_600}, 422, "expires_at"),  # year 41 million: no datetime holds it
    ({"scopes": ["all"]}, 422, "scopes"),
    ({"expires_at": 1}, 400, "expires_at"),  # a valid time, in 1970: in the past
])
def test_a_bad_key_request_is_refused_naming_the_field_and_makes_no_key(client, admin, body, status, param) -> None:  # type: ignore[no-untyped-def]
    count = len(client.get("/keys", params={"limit": 100}, headers=auth(admin[1])).json()["data"])
    err = assert_error(client.post("/keys", json=body, headers=auth(admin[1])), status, param=param)
    assert param in err["message"]
    assert len(client.get("/keys", params={"limit": 100}, headers=auth(admin[1])).json()["data"]) == count


def test_a_key_id_postgres_cannot_store_is_a_400_not_a_500(client, admin) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.delete("/keys/key-%00x", headers=auth(admin[1])), 400, "invalid_string", "key_id")
    assert_error(client.get("/keys", params={"after": "k" * 600}, headers=auth(admin[1])), 400, "invalid_string",
                 "after")


@pytest.mark.parametrize("grace", [-1, 7 * 24 * 3600 + 1])
def test_a_grace_period_outside_zero_to_seven_days_is_refused(client, admin, grace) -> None:  # type: ignore[no-untyped-def]
    old = _make(client, admin[1])
    assert_error(client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": grace}, headers=auth(admin[1])),
                 422, param="grace_seconds")
    assert client.get("/jobs", headers=auth(old["key"])).status_code == 200  # nothing happened to it


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from api.main import create_app
    from api.routes import jobs

    monkeypatch.setattr(jobs, "STREAM_KEY_CHECK_SECONDS", 0.5)
    with uvicorn_in_thread(create_app()) as url:
        yield url


def test_revoking_a_key_ends_its_open_event_stream_with_an_error_event(server: str) -> None:
    tenant_id, key = make_tenant()
    job_id = make_job_row(tenant_id, status="queued")  # never ends by itself: the stream would stay open
    reader = SseReader(server, key, job_id)
    reader.start()
    time.sleep(1.0)
    assert reader.is_alive(), "the stream should be open while its key works"
    with session_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=func.now()))
    reader.finish(timeout=10)
    [error] = [f for f in reader.frames if f["event"] == "error"]
    assert error["data"]["error"]["code"] == "invalid_api_key"


def test_the_cli_makes_an_operator_lists_keys_and_revokes_one(client, capsys) -> None:  # type: ignore[no-untyped-def]
    tenant_id, member = make_tenant()
    with session_scope() as session:
        name = session.get(Tenant, tenant_id).name  # type: ignore[union-attr]
    assert cli(["admin", "create-key", "--tenant", name, "--role", "operator", "--name", "ops",
                "--expires-in-days", "1"]) == 0
    operator = capsys.readouterr().out.strip()
    assert client.get("/metrics", headers=auth(operator)).status_code == 200
    assert cli(["admin", "list-keys", "--tenant", name]) == 0
    listing = capsys.readouterr().out
    assert "operator" in listing and "ops" in listing and operator not in listing and member not in listing
    member_id = [line.split()[0] for line in listing.splitlines()[1:] if " member " in line][0]
    assert cli(["admin", "revoke-key", member_id]) == 0
    capsys.readouterr()
    time.sleep(0.1)
    from api.deps import key_cache

    key_cache().clear()  # the CLI is another process: this worker would refuse it after the cache period
    assert_error(client.get("/jobs", headers=auth(member)), 401, "invalid_api_key")
