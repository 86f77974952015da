"""Users within a tenant (issue 14, "Who submitted it"): a key belongs to a user; the jobs and files it makes
record that user (`"user"` on the object); `GET /jobs?user=` and `GET /files?user=` list one user's; keys made
without one, and what they made, are user "default". Made by the CLI (`--user`) and by a tenant admin
(`POST /keys`), kept by rotation; a name that cannot be a user is a 400 naming the field."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from cli.main import main as cli
from cli.main import run
from common import auth
from common.db import session_scope
from common.models import Tenant
from tests.support.factories import chat_rows, jsonl, make_tenant, spec, upload
from tests.support.http import assert_error
from tests.support.http import auth as bearer


def _key_for(tenant_id: str, user: str, role: str = "member") -> str:
    with session_scope() as session:
        _, key = auth.create_key(session, session.get_one(Tenant, tenant_id), role=role, user=user)
    return key


def _file_and_job(client: Any, key: str) -> tuple[str, str]:
    up = upload(client, key, jsonl(chat_rows(8)))
    assert up.status_code == 200, up.text
    made = client.post("/jobs", json=spec(up.json()["id"]), headers=bearer(key))
    assert made.status_code == 200, made.text
    return up.json()["id"], made.json()["id"]


def _ids(resp: Any) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {item["id"] for item in resp.json()["data"]}


def test_jobs_and_files_record_their_keys_user_and_lists_filter_by_user(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = make_tenant()
    alice, bob = _key_for(tenant_id, "alice"), _key_for(tenant_id, "bob@example.com")
    alice_file, alice_job = _file_and_job(client, alice)
    bob_file, bob_job = _file_and_job(client, bob)

    job = client.get(f"/jobs/{alice_job}", headers=bearer(bob)).json()
    assert job["user"] == "alice", "a user sees the tenant's jobs, each naming who submitted it"
    assert client.get(f"/files/{bob_file}", headers=bearer(alice)).json()["user"] == "bob@example.com"
    assert _ids(client.get("/jobs", params={"user": "alice"}, headers=bearer(bob))) == {alice_job}
    assert _ids(client.get("/jobs", headers=bearer(bob))) == {alice_job, bob_job}
    assert _ids(client.get("/files", params={"user": "bob@example.com"}, headers=bearer(alice))) == {bob_file}
    assert _ids(client.get("/v1/fine_tuning/jobs", params={"user": "bob@example.com"}, headers=bearer(alice))) \
        == {bob_job}, "the OpenAI path of the same list"
    assert _ids(client.get("/v1/files", params={"user": "alice"}, headers=bearer(bob))) == {alice_file}
    assert _ids(client.get("/jobs", params={"user": "carol"}, headers=bearer(alice))) == set()


def test_a_key_made_without_a_user_and_what_it_makes_belong_to_user_default(client) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    file_id, job_id = _file_and_job(client, key)
    assert client.get(f"/jobs/{job_id}", headers=bearer(key)).json()["user"] == "default"
    assert client.get(f"/files/{file_id}", headers=bearer(key)).json()["user"] == "default"
    assert _ids(client.get("/jobs", params={"user": "default"}, headers=bearer(key))) == {job_id}


def test_an_admin_makes_a_key_for_a_user_and_rotating_it_keeps_the_user(client) -> None:  # type: ignore[no-untyped-def]
    tenant_id, admin = make_tenant(role="admin")
    made = client.post("/keys", json={"name": "laptop", "user": "carol"}, headers=bearer(admin))
    assert made.status_code == 200, made.text
    assert made.json()["user"] == "carol"
    _, job_id = _file_and_job(client, made.json()["key"])
    assert client.get(f"/jobs/{job_id}", headers=bearer(admin)).json()["user"] == "carol"
    rotated = client.post(f"/keys/{made.json()['id']}/rotate", json={}, headers=bearer(admin))
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["user"] == "carol"
    listed = {k["id"]: k["user"] for k in client.get("/keys", headers=bearer(admin)).json()["data"]}
    assert listed[rotated.json()["id"]] == "carol" and "default" in listed.values()


def test_a_name_that_cannot_be_a_user_is_400_naming_the_field(client) -> None:  # type: ignore[no-untyped-def]
    _, admin = make_tenant(role="admin")
    for bad in ("", "has space", "-leading-dash", "x" * 65, "nul\x00", "émile"):
        err = assert_error(client.post("/keys", json={"user": bad}, headers=bearer(admin)), 400, "invalid_string")
        assert err["param"] == "user", err
    for route in ("/jobs", "/files"):
        err = assert_error(client.get(route, params={"user": "a b"}, headers=bearer(admin)), 400, "invalid_string")
        assert err["param"] == "user" and "letters, digits" in err["message"], err


def test_the_cli_makes_a_key_for_a_user_lists_it_and_refuses_a_bad_name(client, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tenant_id, _ = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, tenant_id).name
    assert cli(["admin", "create-key", "--tenant", name, "--user", "dave"]) == 0
    key = capsys.readouterr().out.strip()
    _, job_id = _file_and_job(client, key)
    assert client.get(f"/jobs/{job_id}", headers=bearer(key)).json()["user"] == "dave"
    assert cli(["admin", "list-keys", "--tenant", name]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:2] == ["id", "user"]
    assert sorted(line.split()[1] for line in listing[1:]) == ["dave", "default"]
    monkeypatch.setattr(sys, "argv", ["tunequeue", "admin", "create-key", "--tenant", name, "--user", "no spaces"])
    with pytest.raises(SystemExit) as exited:
        run()  # the console script: an error line and exit code 2, no traceback
    assert exited.value.code == 2
    assert "error: `user` must be 1 to 64 characters" in capsys.readouterr().err
