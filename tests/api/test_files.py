from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from common.artifacts import LocalArtifactStore, get_store
from common.datasets.convert import iter_stage_rows
from common.db import session_scope
from common.models import File
from common.settings import BaseModelEntry, get_settings
from tests.support.factories import chat_rows, jsonl, make_tenant, upload
from tests.support.http import assert_error, auth


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


# --- containers, the format override -------------------------------------------------------------------------

CORPUS = Path(__file__).parents[1] / "common" / "datasets" / "corpus"


def _upload(client, key: str, content: bytes, filename: str, **data: str):  # type: ignore[no-untyped-def]
    return client.post("/files", headers=auth(key), files={"file": (filename, io.BytesIO(content))},
                       data={"purpose": "fine-tune", **data})


@pytest.mark.parametrize(("name", "fmt", "stages", "rows"), [
    ("alpaca.csv", "alpaca", ["sft"], 2),
    ("alpaca.tsv", "alpaca", ["sft"], 2),
    ("chat.parquet", "chat", ["sft"], 2),
    ("preference.parquet", "preference", ["dpo", "orpo", "rm"], 1),
    ("paragraphs.txt", "text", ["pt"], 2),
    ("lines.txt", "text", ["pt"], 3),
])
def test_upload_every_container(client, tenant, name: str, fmt: str, stages: list[str],  # type: ignore[no-untyped-def]
                                rows: int) -> None:
    content = (CORPUS / name).read_bytes()
    body = _upload(client, tenant[1], content, name).json()
    assert (body["status"], body["format"], body["stages"], body["row_count"]) == ("processed", fmt, stages, rows)
    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["filename"] == name
    assert client.get(f"/files/{body['id']}/content", headers=auth(tenant[1])).content == content


def test_csv_errors_carry_their_line_numbers(client, tenant) -> None:  # type: ignore[no-untyped-def]
    body = _upload(client, tenant[1], (CORPUS / "alpaca_bad.csv").read_bytes(), "alpaca_bad.csv").json()
    assert body["status"] == "error" and body["stages"] == []
    assert [(e["line"], e["code"]) for e in body["errors"]] == [(3, "invalid_csv"), (4, "missing_content"),
                                                                (5, "invalid_csv")]
    assert body["status_details"].startswith("line 3: the row has 2 fields but the header (line 1) has 3 columns")


def test_stored_file_keeps_its_container_extension(client, tenant) -> None:  # type: ignore[no-untyped-def]
    content = gzip.compress(b"text\nhello\n")
    body = _upload(client, tenant[1], content, "../../Corpus.CSV.gz").json()
    assert (body["status"], body["format"], body["filename"]) == ("processed", "text", "Corpus.CSV.gz")
    with session_scope() as session:
        row = session.get(File, body["id"])
        assert row is not None and row.storage_key == f"files/{tenant[0]}/{body['id']}.csv.gz"
        store = get_store()
        assert isinstance(store, LocalArtifactStore)
        path = store.root / row.storage_key
    assert list(iter_stage_rows(path, "text", "pt")) == [{"text": "hello"}]  # the worker needs only the path


def test_format_override(client, tenant) -> None:  # type: ignore[no-untyped-def]
    chat = jsonl(chat_rows(1))
    body = _upload(client, tenant[1], chat, "t.jsonl", format="alpaca").json()
    assert (body["status"], body["format"], body["errors"][0]["code"]) == ("error", "alpaca", "mixed_formats")
    assert _upload(client, tenant[1], chat, "t.jsonl", format="").json()["format"] == "chat"  # empty: detect
    err = assert_error(_upload(client, tenant[1], chat, "t.jsonl", format="openai"), 400, "invalid_format", "format")
    assert err["message"] == ("format must be one of chat, sharegpt, alpaca, preference, kto, text (or left out to "
                              "detect it from the rows); got 'openai'")


# --- preview -------------------------------------------------------------------------------------------------


def _preview(client, key: str, file_id: str, **params: object):  # type: ignore[no-untyped-def]
    return client.get(f"/files/{file_id}/preview", headers=auth(key), params=params)


def test_preview_shows_the_rendered_rows_and_the_trained_spans(client, tenant, tiny_model) -> None:  # type: ignore[no-untyped-def]
    rows = [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello.", "weight": 0}, {"role": "user", "content": "Again"},
                          {"role": "assistant", "content": "Hello again."}]}] + chat_rows(7)
    file_id = upload(client, tenant[1], jsonl(rows)).json()["id"]
    resp = _preview(client, tenant[1], file_id)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {k: body[k] for k in ("object", "file_id", "format", "stage", "base_model", "template", "train_on_inputs")} \
        == {"object": "file.preview", "file_id": file_id, "format": "chat", "stage": "sft",
            "base_model": "tiny-llama", "template": "chatml", "train_on_inputs": False}
    assert [r["line"] for r in body["data"]] == [1, 2, 3, 4, 5]  # limit defaults to 5
    first = body["data"][0]
    assert first["row"] == rows[0] and first["error"] is None
    (seq,) = first["sequences"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert "".join(s["text"] for s in seq["segments"]) == tokenizer.apply_chat_template(rows[0]["messages"],
                                                                                          tokenize=False)
    assert [s["text"] for s in seq["segments"] if s["trained"]] == ["Hello again.<|im_end|>"]  # weight 0 is not
    assert seq["tokens"] == sum(s["tokens"] for s in seq["segments"]) == len(
        tokenizer.apply_chat_template(rows[0]["messages"], tokenize=True, return_dict=False))
    assert seq["trained_tokens"] == sum(s["tokens"] for s in seq["segments"] if s["trained"])

    every = _preview(client, tenant[1], file_id, limit=20, train_on_inputs="true", template="chatml").json()
    assert len(every["data"]) == 8 and every["template"] == "chatml"
    assert all(s["trained"] for r in every["data"] for s in r["sequences"][0]["segments"])


def test_preview_of_each_stage(client, tenant, tiny_model) -> None:  # type: ignore[no-untyped-def]
    pairs = _upload(client, tenant[1], (CORPUS / "preference.parquet").read_bytes(), "p.parquet").json()["id"]
    body = _preview(client, tenant[1], pairs, stage="orpo").json()
    assert body["stage"] == "orpo"
    chosen, rejected = body["data"][0]["sequences"]
    assert (chosen["name"], rejected["name"]) == ("chosen", "rejected")
    assert [s["text"] for s in chosen["segments"] if s["trained"]] == ["Paris.<|im_end|>"]
    assert [s["text"] for s in rejected["segments"] if s["trained"]] == ["Lyon.<|im_end|>"]
    assert _preview(client, tenant[1], pairs).json()["stage"] == "dpo"  # the file's first stage

    kto = _upload(client, tenant[1], (CORPUS / "kto.jsonl").read_bytes(), "kto.jsonl").json()["id"]
    body = _preview(client, tenant[1], kto).json()
    assert [r["row"]["label"] for r in body["data"]] == [True, False]
    assert [r["sequences"][0]["name"] for r in body["data"]] == ["completion", "completion"]

    text = _upload(client, tenant[1], (CORPUS / "paragraphs.txt").read_bytes(), "p.txt").json()["id"]
    body = _preview(client, tenant[1], text, limit=1).json()
    assert body["template"] is None and body["data"][0]["line"] == 1
    (segment,) = body["data"][0]["sequences"][0]["segments"]
    assert segment == {"text": "Chapter one.\nIt was a dark night.<|im_end|>", "trained": True,
                       "tokens": body["data"][0]["sequences"][0]["tokens"]}


def test_preview_bad_inputs(client, tenant, tiny_model) -> None:  # type: ignore[no-untyped-def]
    key = tenant[1]
    file_id = upload(client, key, jsonl(chat_rows(2))).json()["id"]
    err = assert_error(_preview(client, key, file_id, base_model="gpt-5"), 400, "model_not_found", "base_model")
    assert "registered base models: tiny-llama" in err["message"]
    err = assert_error(_preview(client, key, file_id, template="vicuna"), 400, "invalid_template", "template")
    assert "chatml" in err["message"]
    err = assert_error(_preview(client, key, file_id, stage="dpo"), 400, "invalid_stage", "stage")
    assert "feeds sft" in err["message"]
    assert_error(_preview(client, key, file_id, limit=0), 400, param="limit")
    assert_error(_preview(client, key, file_id, limit=21), 400, param="limit")
    assert_error(_preview(client, key, file_id, limit="many"), 422, param="limit")
    broken = upload(client, key, b"{not json\n").json()["id"]
    err = assert_error(_preview(client, key, broken), 400, "file_not_processed", "file_id")
    assert "line 1" in err["message"]
    assert_error(_preview(client, key, "file-nope"), 404, "file_not_found")
    _, other_key = make_tenant()
    assert_error(_preview(client, other_key, file_id), 404, "file_not_found")


def test_preview_when_the_model_cannot_load_is_503(client, tenant, tmp_path) -> None:  # type: ignore[no-untyped-def]
    file_id = upload(client, tenant[1], jsonl(chat_rows(1))).json()["id"]
    settings = get_settings()
    settings.base_models["broken"] = BaseModelEntry(path=str(tmp_path))
    try:
        err = assert_error(_preview(client, tenant[1], file_id, base_model="broken"), 503, "base_model_unavailable",
                           "base_model")
    finally:
        del settings.base_models["broken"]
    assert "could not be loaded" in err["message"]


def test_upload_idempotency_key(client, tenant) -> None:  # type: ignore[no-untyped-def]
    content = jsonl(chat_rows(3))

    def send(body: bytes, key: str = "up-1"):  # type: ignore[no-untyped-def]
        return client.post("/files", headers={**auth(tenant[1]), "Idempotency-Key": key},
                           files={"file": ("train.jsonl", io.BytesIO(body))}, data={"purpose": "fine-tune"})

    first, retry = send(content), send(content)
    assert first.status_code == retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert [f["id"] for f in client.get("/files", headers=auth(tenant[1])).json()["data"]] == [first.json()["id"]]
    assert_error(send(jsonl(chat_rows(4))), 400, "idempotency_key_reused", "Idempotency-Key")
    assert send(content, key="up-2").json()["id"] != first.json()["id"]
