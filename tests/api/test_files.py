from __future__ import annotations

import io
import os

from common.settings import get_settings
from tests.api.conftest import assert_error, auth
from tests.factories import chat_rows, jsonl, make_tenant, upload


def test_upload_valid_chat_file(client, tenant) -> None:  # type: ignore[no-untyped-def]
    content = jsonl(chat_rows(5))
    resp = upload(client, tenant[1], content)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert (body["status"], body["format"], body["row_count"], body["bytes"]) == ("processed", "chat", 5, len(content))
    assert "sft" in body["stages"] and body["errors"] == []
    got = client.get(f"/files/{body['id']}/content", headers=auth(tenant[1]))
    assert got.content == content
    listed = client.get("/files", headers=auth(tenant[1])).json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [body["id"]]


def test_bad_line_marks_file_error_with_line_number(client, tenant) -> None:  # type: ignore[no-untyped-def]
    content = jsonl(chat_rows(2)) + b"{not json\n" + jsonl(chat_rows(1))
    body = upload(client, tenant[1], content).json()
    assert body["status"] == "error"
    assert body["errors"][0]["line"] == 3 and body["errors"][0]["code"] == "invalid_json"
    assert "line 3" in body["status_details"]


def test_not_jsonl_at_all(client, tenant) -> None:  # type: ignore[no-untyped-def]
    body = upload(client, tenant[1], b"hello, this is plain prose\nnot json\n", "notes.jsonl").json()
    assert body["status"] == "error" and body["errors"][0]["line"] == 1


def test_upload_without_file_field(client, tenant) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/files", headers=auth(tenant[1]), data={"purpose": "fine-tune"})
    assert_error(resp, 400, "missing_file", "file")


def test_bad_purpose(client, tenant) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/files", headers=auth(tenant[1]), data={"purpose": "banana"},
                       files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(1))))})
    assert_error(resp, 400, param="purpose")


def test_upload_over_limit_is_413_and_leaves_nothing(client, tenant) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    before = _files_on_disk(settings.artifacts_path)
    old = settings.max_upload_bytes
    settings.max_upload_bytes = 1000
    try:
        # Declared size over the limit: refused before the body is read.
        assert_error(upload(client, tenant[1], b"x" * 200_000), 413, "file_too_large", "file")
        # Under the declared-size slack, but over the limit while streaming: refused, partial file removed.
        assert_error(upload(client, tenant[1], jsonl(chat_rows(20))), 413, "file_too_large", "file")
    finally:
        settings.max_upload_bytes = old
    assert _files_on_disk(settings.artifacts_path) == before
    assert client.get("/files", headers=auth(tenant[1])).json()["data"] == []


def _files_on_disk(root) -> set[str]:  # type: ignore[no-untyped-def]
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def test_other_tenants_file_is_404(client, tenant) -> None:  # type: ignore[no-untyped-def]
    file_id = upload(client, tenant[1], jsonl(chat_rows(2))).json()["id"]
    _, other_key = make_tenant()
    assert_error(client.get(f"/files/{file_id}", headers=auth(other_key)), 404, "file_not_found")
    assert_error(client.get(f"/files/{file_id}/content", headers=auth(other_key)), 404, "file_not_found")
    assert_error(client.get("/files/file-doesnotexist", headers=auth(tenant[1])), 404, "file_not_found")


def test_pagination_cursor(client, tenant) -> None:  # type: ignore[no-untyped-def]
    ids = [upload(client, tenant[1], jsonl(chat_rows(1))).json()["id"] for _ in range(3)]
    page1 = client.get("/files?limit=2", headers=auth(tenant[1])).json()
    assert page1["has_more"] is True and [f["id"] for f in page1["data"]] == ids[::-1][:2]
    page2 = client.get(f"/files?limit=2&after={page1['last_id']}", headers=auth(tenant[1])).json()
    assert page2["has_more"] is False and [f["id"] for f in page2["data"]] == [ids[0]]
    assert_error(client.get("/files?limit=1000", headers=auth(tenant[1])), 400, param="limit")
    assert_error(client.get("/files?limit=abc", headers=auth(tenant[1])), 422, param="limit")
    assert_error(client.get("/files?after=file-nope", headers=auth(tenant[1])), 400, "invalid_cursor", "after")
