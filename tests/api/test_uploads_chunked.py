"""An upload without a Content-Length (`Transfer-Encoding: chunked`) is counted as it arrives
(api/upload_limits.py): over TUNEQUEUE_MAX_UPLOAD_BYTES it is answered 413 `file_too_large` while the client is
still sending, and leaves nothing in the artifact store or the temp folder. A real uvicorn, because the test
client hands the app the whole body at once; a raw socket, because an HTTP client sends its whole body before it
reads the answer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import get_settings
from tests.support.chunked import post_chunked
from tests.support.factories import chat_rows, jsonl
from tests.support.servers import uvicorn_in_thread

LIMIT = 1024 * 1024
BODY = 64 * 1024 * 1024
CHUNK = 64 * 1024
# What may be on the way when the answer comes: the slack the middleware allows for the form around the file
# (64 KiB), the chunk being parsed, and the two sockets' kernel buffers (the client's is pinned small below).
MARGIN = 4 * 1024 * 1024
BOUNDARY = "tunequeue-test-boundary"


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    from api.main import create_app

    with uvicorn_in_thread(create_app()) as url:
        yield url


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A 1 MiB upload limit, and a temp folder of the test's own for the form parser's spooled parts."""
    monkeypatch.setattr(get_settings(), "max_upload_bytes", LIMIT)
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    return spool


def _form_chunks(payload: Iterator[bytes]) -> Iterator[bytes]:
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
           f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
           "Content-Type: application/jsonl\r\n\r\n").encode()
    yield from payload
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _rows(total: int) -> Iterator[bytes]:
    row = jsonl(chat_rows(1))
    block = row * (CHUNK // len(row))
    sent = 0
    while sent < total:
        yield block
        sent += len(block)


def _chunked_upload(url: str, key: str, parts: Iterator[bytes]) -> tuple[int, dict[str, Any], int, bool]:
    """POST /files with Transfer-Encoding: chunked, sending until the server answers or the body ends: (status,
    JSON body, bytes of the body sent before the answer came, whether the whole body was sent)."""
    answer = post_chunked(url, "/files", {"Authorization": f"Bearer {key}"}, parts,
                          content_type=f"multipart/form-data; boundary={BOUNDARY}")
    return answer.status, answer.body, answer.sent, answer.finished


def _files_under(root: Path) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def test_chunked_upload_over_the_limit_is_413_before_the_rest_is_sent_and_leaves_nothing(
        live_url: str, tenant: tuple[str, str], small_limit: Path) -> None:
    store = get_settings().artifacts_path
    before = _files_under(store)
    status, body, sent, finished = _chunked_upload(live_url, tenant[1], _form_chunks(_rows(BODY)))
    assert status == 413, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["code"], body["error"]["param"]) == ("file_too_large", "file")
    assert "TUNEQUEUE_MAX_UPLOAD_BYTES" in body["error"]["message"]
    assert not finished, "the answer came only after the whole 64 MiB body was sent"
    assert sent <= LIMIT + MARGIN, f"the server took {sent} bytes before refusing a {LIMIT}-byte limit"
    assert _files_under(store) == before
    assert _files_under(small_limit) == set()


def test_chunked_upload_under_the_limit_is_accepted(live_url: str, tenant: tuple[str, str],
                                                    small_limit: Path) -> None:
    rows = jsonl(chat_rows(20))
    status, body, _, finished = _chunked_upload(live_url, tenant[1], _form_chunks(iter([rows[:500], rows[500:]])))
    assert (status, finished) == (200, True), body
    assert (body["status"], body["row_count"], body["bytes"]) == ("processed", 20, len(rows))
