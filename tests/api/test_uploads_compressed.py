"""Compressed uploads through POST /files: a gzip bomb is a file in status `error` with `file_too_large` (not a
500, not an API that swells by the bomb's size), a Parquet file that expands past the bound likewise, and an
ordinary gzip upload is processed as before."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from tests.support.factories import chat_rows, jsonl, upload

MIB = 1024 * 1024


def test_gzip_bomb_upload_is_an_error_file_with_file_too_large(client: TestClient, tenant: tuple[str, str]) -> None:
    row = json.dumps(chat_rows(1)[0]).encode()
    array = b"[" + b",".join([row] * (64 * MIB // len(row))) + b"]"  # 64 MiB of JSON, about 250 KB gzipped
    body = upload(client, tenant[1], gzip.compress(array, 9), "bomb.json.gz").json()
    assert body["status"] == "error", body
    assert [(e["code"], e["line"]) for e in body["errors"]] == [("file_too_large", 0)]
    assert "upload it uncompressed, or split it" in body["errors"][0]["message"]


def test_parquet_upload_that_expands_past_the_bound_is_file_too_large(client: TestClient,
                                                                      tenant: tuple[str, str]) -> None:
    out = io.BytesIO()
    pq.write_table(pa.table({"text": ["a" * 100_000] * 200}), out, compression="zstd", use_dictionary=False)
    body = upload(client, tenant[1], out.getvalue(), "bomb.parquet").json()
    assert body["status"] == "error", body
    assert [e["code"] for e in body["errors"]] == ["file_too_large"]


def test_ordinary_gzip_upload_is_processed(client: TestClient, tenant: tuple[str, str]) -> None:
    content = gzip.compress(jsonl(chat_rows(50)))
    body = upload(client, tenant[1], content, "train.jsonl.gz").json()
    assert (body["status"], body["format"], body["row_count"], body["bytes"]) == ("processed", "chat", 50,
                                                                                 len(content))
