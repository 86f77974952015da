"""The Python client (tunequeue_client) against the live stack: upload with the validation result, errors as
ApiError with the API's code and param, an estimate, a job created and followed live over Server-Sent Events to
the end — through a connection that drops mid-stream and is resumed with Last-Event-ID, missing and repeating no
event — then its model listed and downloaded. The drop is injected in the client's HTTP transport (a stand-in for a
network failure, which cannot be had on demand here); everything behind it is the real service."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.s3_server import assert_stored_where_the_stack_stores
from tests.support.servers import LiveService
from tunequeue_client import ApiError, Client

pytestmark = pytest.mark.slow


class _DropsAfter(httpx.SyncByteStream):
    """A response body that raises a network error after `frames` complete SSE frames."""

    def __init__(self, inner: httpx.SyncByteStream, frames: int) -> None:
        self.inner, self.frames = inner, frames

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self.inner:
            seen += chunk.count(b"\n\n")  # a frame ends with a blank line
            yield chunk
            if seen >= self.frames:
                raise httpx.ReadError("connection dropped (injected by the test)")

    def close(self) -> None:
        self.inner.close()


class DropFirstStream(httpx.HTTPTransport):
    """The real transport; the first event stream it carries breaks after a few frames."""

    def __init__(self, frames: int = 3) -> None:
        super().__init__()
        self.frames, self.dropped, self.resumed_from = frames, False, None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        if b"stream=true" in request.url.query:
            if self.dropped:
                self.resumed_from = self.resumed_from or request.headers.get("Last-Event-ID")
            else:
                self.dropped = True
                assert isinstance(resp.stream, httpx.SyncByteStream)
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      stream=_DropsAfter(resp.stream, self.frames), extensions=resp.extensions)
        return resp


def test_a_script_uploads_trains_follows_through_a_dropped_stream_and_downloads_the_model(
        stack: LiveService, tmp_path: Path) -> None:
    tenant_id, key = make_tenant()
    transport = DropFirstStream(frames=3)
    client = Client(stack.url, key, transport=transport)

    bad = client.upload_bytes(b'{"messages": [{"role": "user"}]}\n', "bad.jsonl")
    assert bad["status"] == "error" and bad["errors"][0]["line"] == 1
    with pytest.raises(ApiError) as missing:
        client.get_job("ftjob-nope")
    assert (missing.value.status, missing.value.param) == (404, "job_id")

    file = client.upload_bytes(jsonl(chat_rows(16)), "train.jsonl")
    assert file["status"] == "processed"
    body: dict[str, Any] = spec(file["id"])
    assert client.estimate_job(body)["estimate"]["cpu"]["total_bytes"] > 0
    job = client.create_job(body)

    followed = list(client.follow_events(job["id"]))
    assert transport.dropped and transport.resumed_from is not None, "the stream did not drop and resume"
    stored = client.events(job["id"])
    assert [e["id"] for e in followed] == [e["id"] for e in stored], "an event was missed or repeated"
    done = client.get_job(job["id"])
    assert done["status"] == "succeeded", done

    assert done["fine_tuned_model"] in {m["id"] for m in client.list_models()}
    archive = client.download_model(done["fine_tuned_model"], tmp_path / "model.tar")
    with tarfile.open(archive) as tar:
        assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= set(tar.getnames())
    assert stack.store is not None
    assert_stored_where_the_stack_stores(stack.store, tenant_id, job["id"])
    assert client.quota()["organization_id"] == done["organization_id"]
