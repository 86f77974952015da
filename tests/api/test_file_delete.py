"""DELETE /files/{id} (and /v1/files/{id}, OpenAI's shape): the bytes go, the file reads as not found everywhere,
it no longer counts against storage_gb; a file an unfinished job uses is kept (409 file_in_use); another tenant's
is 404; an Idempotency-Key whose file was deleted is refused rather than answered with a deleted file."""

from __future__ import annotations

from typing import Any

from common.db import session_scope
from common.models import File
from tests.support.environment import ROOT
from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.http import assert_error
from tests.support.http import auth as bearer


def _upload(client: Any, key: str, **headers: str) -> dict[str, Any]:
    resp = client.post("/files", headers={**bearer(key), **headers},
                       files={"file": ("train.jsonl", jsonl(chat_rows(8)), "application/jsonl")})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _bytes_path(file_id: str) -> Any:
    with session_scope() as session:
        return ROOT / "artifacts" / session.get_one(File, file_id).storage_key


def test_a_deleted_file_loses_its_bytes_and_reads_as_not_found_everywhere(client) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    kept, gone = _upload(client, key), _upload(client, key)
    path = _bytes_path(gone["id"])
    assert path.is_file()
    stored = client.get("/quota", headers=bearer(key)).json()["usage"]["storage_gb"]
    resp = client.delete(f"/v1/files/{gone['id']}", headers=bearer(key))
    assert resp.status_code == 200 and resp.json() == {"id": gone["id"], "object": "file", "deleted": True}
    assert not path.exists()
    assert_error(client.get(f"/files/{gone['id']}", headers=bearer(key)), 404, param="file_id")
    assert_error(client.get(f"/files/{gone['id']}/content", headers=bearer(key)), 404)
    assert [f["id"] for f in client.get("/files", headers=bearer(key)).json()["data"]] == [kept["id"]]
    assert_error(client.post("/jobs", json=spec(gone["id"]), headers=bearer(key)), 404, param="training_file")
    assert_error(client.delete(f"/files/{gone['id']}", headers=bearer(key)), 404, param="file_id")
    after = client.get("/quota", headers=bearer(key)).json()["usage"]["storage_gb"]
    assert round((stored - after) * 10**9) == gone["bytes"]


def test_a_file_that_an_unfinished_job_uses_is_kept_with_409_file_in_use(client) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    file = _upload(client, key)
    job = client.post("/jobs", json=spec(file["id"]), headers=bearer(key)).json()
    err = assert_error(client.delete(f"/files/{file['id']}", headers=bearer(key)), 409, "file_in_use", "file_id")
    assert job["id"] in err["message"] and "cancel" in err["message"]
    assert _bytes_path(file["id"]).is_file()
    assert client.post(f"/jobs/{job['id']}/cancel", headers=bearer(key)).status_code == 200
    assert client.delete(f"/files/{file['id']}", headers=bearer(key)).status_code == 200, "its job has ended"
    assert client.get(f"/jobs/{job['id']}", headers=bearer(key)).json()["training_file"] == file["id"]


def test_another_tenants_file_cannot_be_deleted_and_stays(client) -> None:  # type: ignore[no-untyped-def]
    _, owner = make_tenant()
    _, other = make_tenant()
    file = _upload(client, owner)
    assert_error(client.delete(f"/files/{file['id']}", headers=bearer(other)), 404, param="file_id")
    assert client.get(f"/files/{file['id']}", headers=bearer(owner)).status_code == 200


def test_an_idempotency_key_whose_file_was_deleted_is_refused_not_answered_with_the_deleted_file(client) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    file = _upload(client, key, **{"Idempotency-Key": "upload-1"})
    assert client.delete(f"/files/{file['id']}", headers=bearer(key)).status_code == 200
    resp = client.post("/files", headers={**bearer(key), "Idempotency-Key": "upload-1"},
                       files={"file": ("train.jsonl", jsonl(chat_rows(8)), "application/jsonl")})
    err = assert_error(resp, 400, "idempotency_key_reused", "Idempotency-Key")
    assert "deleted" in err["message"]
