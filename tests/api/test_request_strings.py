"""Strings Postgres cannot store or compare (a NUL, a lone surrogate, a value longer than its column) are a 400
that names the field, wherever they arrive: a body field, a path id, a query parameter, a header, an upload's
filename (common/schemas/strings.py). A refused upload leaves no bytes in the artifact store. Job `metadata` is
bounded like OpenAI's."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import pytest

from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, spec, upload
from tests.support.http import assert_error, auth

NUL = "a\x00b"
LONG_KEY = "k" * 300


@pytest.fixture
def good_file(client, tenant) -> str:  # type: ignore[no-untyped-def]
    return upload(client, tenant[1], jsonl(chat_rows(8))).json()["id"]


def _stored_files() -> set[str]:
    root = get_settings().artifacts_path
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def _raw_upload(client, key: str, filename: bytes, **headers: str):  # type: ignore[no-untyped-def]
    """A multipart upload whose filename goes on the wire byte for byte (httpx would percent-escape a NUL)."""
    boundary = secrets.token_hex(8)
    head = f"--{boundary}\r\n".encode() + b'Content-Disposition: form-data; name="file"; filename="' + filename
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = head + b'"\r\nContent-Type: application/jsonl\r\n\r\n' + jsonl(chat_rows(2)) + tail
    return client.post("/files", content=body, headers={
        **auth(key), **headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.parametrize(("filename", "headers", "param"), [
    (b"tr\x00ain.jsonl", {}, "file"),
    (b"train.jsonl", {"Idempotency-Key": LONG_KEY}, "Idempotency-Key"),
], ids=["nul-in-filename", "300-character-idempotency-key"])
def test_unstorable_upload_is_400_and_leaves_nothing_in_the_store(  # type: ignore[no-untyped-def]
        client, tenant, filename, headers, param) -> None:
    before = _stored_files()
    err = assert_error(_raw_upload(client, tenant[1], filename, **headers), 400, "invalid_string", param)
    assert "NUL" in err["message"] or "at most 255 characters" in err["message"], err
    assert _stored_files() == before
    assert client.get("/files", headers=auth(tenant[1])).json()["data"] == []


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = body
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return body


@pytest.mark.parametrize(("path", "value", "param"), [
    ("training_file", NUL, "training_file"),
    ("validation_file", NUL, "validation_file"),
    ("base_model", NUL, "base_model"),
    ("template", NUL, "template"),
    ("suffix", NUL, "suffix"),
    ("from_model", "ft:" + NUL, "from_model"),
    ("resume_from", "ftckpt-" + NUL, "resume_from"),
    ("metadata", {"team": NUL}, "metadata"),
    ("metadata", {NUL: "search"}, "metadata"),
    ("method.lora.target_modules", ["q_proj", NUL], "method.lora.target_modules[1]"),
    ("training_file", "file-" + "x" * 600, "training_file"),
])
def test_unstorable_string_in_a_job_spec_is_400_naming_it(  # type: ignore[no-untyped-def]
        client, tenant, good_file, path, value, param) -> None:
    body = _set(spec(good_file), path, value)
    assert_error(client.post("/jobs", headers=auth(tenant[1]), json=body), 400, "invalid_string"
                 if param != "metadata" else "invalid_metadata", param)
    assert client.get("/jobs", headers=auth(tenant[1])).json()["data"] == []


def test_lone_surrogate_in_a_job_spec_is_400_naming_it(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    raw = json.dumps(spec(good_file, suffix="x\ud800"))  # ASCII JSON: the lone surrogate travels as \ud800
    err = assert_error(client.post("/jobs", headers={**auth(tenant[1]), "Content-Type": "application/json"},
                                   content=raw), 400, "invalid_string", "suffix")
    assert "surrogate" in err["message"]


def test_openai_job_with_a_nul_is_400_naming_the_field(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "tiny-llama", "training_file": good_file, "metadata": {"team": NUL}}
    assert_error(client.post("/v1/fine_tuning/jobs", headers=auth(tenant[1]), json=body), 400,
                 "invalid_metadata", "metadata")
    body = {"model": NUL, "training_file": good_file}
    assert_error(client.post("/v1/fine_tuning/jobs", headers=auth(tenant[1]), json=body), 400,
                 "invalid_string", "model")


@pytest.mark.parametrize("route", ["/jobs", "/v1/fine_tuning/jobs"])
def test_overlong_idempotency_key_on_a_job_is_400_and_creates_nothing(  # type: ignore[no-untyped-def]
        client, tenant, good_file, route) -> None:
    body = spec(good_file) if route == "/jobs" else {"model": "tiny-llama", "training_file": good_file}
    resp = client.post(route, headers={**auth(tenant[1]), "Idempotency-Key": LONG_KEY}, json=body)
    err = assert_error(resp, 400, "invalid_string", "Idempotency-Key")
    assert "at most 255 characters" in err["message"]
    assert client.get("/jobs", headers=auth(tenant[1])).json()["data"] == []
    ok = client.post(route, headers={**auth(tenant[1]), "Idempotency-Key": "k" * 255}, json=body)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(("method", "url", "param"), [
    ("GET", "/jobs/ftjob-a%00b", "job_id"),
    ("POST", "/jobs/ftjob-a%00b/cancel", "job_id"),
    ("GET", "/jobs/ftjob-a%00b/events", "job_id"),
    ("GET", "/jobs/ftjob-a%00b/metrics", "job_id"),
    ("GET", "/jobs/ftjob-a%00b/checkpoints", "job_id"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-a%00b", "job_id"),
    ("GET", "/files/file-a%00b", "file_id"),
    ("GET", "/files/file-a%00b/content", "file_id"),
    ("GET", "/files/file-a%00b/preview", "file_id"),
    ("GET", "/models/ft:a%00b", "model_id"),
    ("GET", "/v1/models/ft:a%00b", "model_id"),
    ("GET", "/models/ft:a%00b/content", "model_id"),
    ("DELETE", "/v1/models/ft:a%00b", "model_id"),
    ("GET", "/jobs?after=a%00b", "after"),
    ("GET", "/jobs?status=queued%00", "status"),
    ("GET", "/files?after=a%00b", "after"),
    ("GET", "/v1/fine_tuning/jobs?after=a%00b", "after"),
])
def test_nul_in_a_path_or_query_string_is_400_naming_it(client, tenant, method, url, param) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.request(method, url, headers=auth(tenant[1])), 400, "invalid_string", param)


def test_nul_in_an_own_jobs_event_and_checkpoint_cursor_is_400(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    job_id = client.post("/jobs", headers=auth(tenant[1]), json=spec(good_file)).json()["id"]
    for tail in ("events", "checkpoints"):
        assert_error(client.get(f"/jobs/{job_id}/{tail}?after=a%00b", headers=auth(tenant[1])), 400,
                     "invalid_string", "after")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_nul_in_the_inference_model_is_400_naming_it(client, tenant, route) -> None:  # type: ignore[no-untyped-def]
    body: dict[str, Any] = {"model": "ft:" + NUL, "max_tokens": 2}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"})
    assert_error(client.post(route, headers=auth(tenant[1]), json=body), 400, "invalid_string", "model")


# --- metadata bounds (OpenAI's: 16 pairs, 64-character keys, 512-character values, strings only) ---------------


@pytest.mark.parametrize(("at_limit", "one_over", "words"), [
    ({f"k{i}": "v" for i in range(16)}, {f"k{i}": "v" for i in range(17)}, "at most 16 pairs"),
    ({"k" * 64: "v"}, {"k" * 65: "v"}, "at most 64 characters"),
    ({"team": "v" * 512}, {"team": "v" * 513}, "at most 512 characters"),
    ({"team": "7"}, {"team": 7}, "must be a string"),
    ({"team": "{}"}, {"team": {"nested": "x"}}, "must be a string"),
    ({}, ["team", "search"], "must be an object"),
], ids=["pairs", "key-length", "value-length", "number-value", "object-value", "a-list"])
@pytest.mark.parametrize("route", ["/jobs", "/v1/fine_tuning/jobs"])
def test_metadata_at_a_limit_is_accepted_and_one_over_is_400_naming_metadata_and_the_limit(  # type: ignore[no-untyped-def]
        client, tenant, good_file, route, at_limit, one_over, words) -> None:
    body = spec(good_file) if route == "/jobs" else {"model": "tiny-llama", "training_file": good_file}
    err = assert_error(client.post(route, headers=auth(tenant[1]), json={**body, "metadata": one_over}), 400,
                       "invalid_metadata", "metadata")
    assert words in err["message"], err
    resp = client.post(route, headers=auth(tenant[1]), json={**body, "metadata": at_limit})
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"] == at_limit
