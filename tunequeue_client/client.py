"""`Client`: one method per native API operation a user needs, each returning the API's JSON object (the shapes
are documented in the API's docs/api.md and its OpenAPI page, /docs)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from tunequeue_client.errors import ApiError
from tunequeue_client.sse import Frame, frames

JSON = dict[str, Any]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class Client:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {api_key}"},
                                  timeout=timeout, transport=transport)

    @classmethod
    def from_env(cls, **options: Any) -> Client:
        """`TUNEQUEUE_URL` (default http://127.0.0.1:8000) and `TUNEQUEUE_API_KEY`."""
        key = os.environ.get("TUNEQUEUE_API_KEY")
        if not key:
            raise ValueError("set TUNEQUEUE_API_KEY to your API key (tunequeue admin create-key prints one)")
        return cls(os.environ.get("TUNEQUEUE_URL", "http://127.0.0.1:8000"), key, **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise ApiError(resp.status_code, body)
        return resp.json() if resp.content else None

    def _pages(self, path: str, **params: Any) -> Iterator[JSON]:
        """Every item of a paged list, following `after`."""
        after = None
        while True:
            page = self._call("GET", path, params={**params, **({"after": after} if after else {})})
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            after = page["last_id"]

    # --- files ---
    def upload_file(self, path: str | Path, *, purpose: str = "fine-tune", format: str | None = None,
                    idempotency_key: str | None = None) -> JSON:
        """Upload a dataset; the answer carries the validation result (`status`, line-numbered `errors`)."""
        path = Path(path)
        with path.open("rb") as data:
            return self.upload_bytes(data, path.name, purpose=purpose, format=format, idempotency_key=idempotency_key)

    def upload_bytes(self, data: BinaryIO | bytes, filename: str, *, purpose: str = "fine-tune",
                     format: str | None = None, idempotency_key: str | None = None) -> JSON:
        form = {"purpose": purpose, **({"format": format} if format else {})}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: JSON = self._call("POST", "/files", files={"file": (filename, data)}, data=form, headers=headers)
        return result

    def get_file(self, file_id: str) -> JSON:
        result: JSON = self._call("GET", f"/files/{file_id}")
        return result

    def list_files(self, *, user: str | None = None) -> Iterator[JSON]:
        return self._pages("/files", **({"user": user} if user else {}))

    def preview_file(self, file_id: str, **params: Any) -> JSON:
        result: JSON = self._call("GET", f"/files/{file_id}/preview", params=params)
        return result

    def delete_file(self, file_id: str) -> JSON:
        result: JSON = self._call("DELETE", f"/files/{file_id}")
        return result

    # --- jobs ---
    def create_job(self, spec: JSON, *, idempotency_key: str | None = None) -> JSON:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: JSON = self._call("POST", "/jobs", json=spec, headers=headers)
        return result

    def estimate_job(self, spec: JSON) -> JSON:
        result: JSON = self._call("POST", "/jobs/estimate", json=spec)
        return result

    def get_job(self, job_id: str) -> JSON:
        result: JSON = self._call("GET", f"/jobs/{job_id}")
        return result

    def list_jobs(self, *, status: str | None = None, user: str | None = None) -> Iterator[JSON]:
        params = {k: v for k, v in (("status", status), ("user", user)) if v}
        return self._pages("/jobs", **params)

    def cancel_job(self, job_id: str) -> JSON:
        result: JSON = self._call("POST", f"/jobs/{job_id}/cancel")
        return result

    def job_metrics(self, job_id: str) -> JSON:
        result: JSON = self._call("GET", f"/jobs/{job_id}/metrics")
        return result

    def checkpoints(self, job_id: str) -> list[JSON]:
        result: list[JSON] = self._call("GET", f"/jobs/{job_id}/checkpoints")["data"]
        return result

    def events(self, job_id: str, *, limit: int = 100) -> list[JSON]:
        """The job's events so far, oldest first."""
        return list(reversed(list(self._pages(f"/jobs/{job_id}/events", limit=limit))))

    def stream(self, job_id: str, *, reconnect_seconds: float = 1.0, max_reconnects: int = 100,
               on_reconnect: Callable[[Exception, int], None] | None = None) -> Iterator[Frame]:
        """Every frame of the job's event stream, replayed from its first event and followed live until `done`.
        A dropped connection is resumed after the last event received (Last-Event-ID), so no event is missed or
        repeated; after `max_reconnects` failed reconnects in a row the last error is raised. `on_reconnect` is
        called with the error and the number of failures in a row before each new try."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                with self._http.stream("GET", f"/jobs/{job_id}/events", params={"stream": "true"}, headers=headers,
                                       timeout=httpx.Timeout(60.0, read=90.0)) as resp:
                    if resp.status_code == 204:  # the job has ended and every event was delivered
                        return
                    if resp.status_code >= 400:
                        resp.read()
                        raise ApiError(resp.status_code, _json_or_text(resp))
                    for frame in frames(resp.iter_lines()):
                        failures = 0
                        if frame.id is not None:
                            last_id = frame.id
                        yield frame
                        if frame.event == "done":
                            return
                        if frame.event == "error":
                            raise ApiError(401, {"error": frame.data})
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                failures += 1
                if failures > max_reconnects:
                    raise
                if on_reconnect is not None:
                    on_reconnect(exc, failures)
                time.sleep(reconnect_seconds)

    def follow_events(self, job_id: str, **options: Any) -> Iterator[JSON]:
        """The job's events (not the progress frames), oldest first, live until the job ends."""
        for frame in self.stream(job_id, **options):
            if frame.event == "message":
                yield frame.data

    def wait(self, job_id: str, *, poll_seconds: float = 2.0, timeout: float | None = None) -> JSON:
        """The job once it has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(poll_seconds)

    # --- inference ---
    def chat_completion(self, model: str, messages: list[JSON], **params: Any) -> JSON:
        """`POST /v1/chat/completions`: the whole answer (`choices[0].message.content`, `usage`). `params` are the
        other fields of the request (`temperature`, `max_tokens`, `seed`, …: docs/inference.md)."""
        result: JSON = self._call("POST", "/v1/chat/completions",
                                  json={"model": model, "messages": messages, **params, "stream": False})
        return result

    def stream_chat_completion(self, model: str, messages: list[JSON], **params: Any) -> Iterator[JSON]:
        """`POST /v1/chat/completions` with `stream: true`: each `chat.completion.chunk` as it is made (the text
        is in `choices[0].delta.content`), until `data: [DONE]`. Closing the iterator early hangs up, and the
        server stops generating."""
        body = {"model": model, "messages": messages, **params, "stream": True}
        with self._http.stream("POST", "/v1/chat/completions", json=body,
                               headers={"Accept": "text/event-stream"},
                               timeout=httpx.Timeout(60.0, read=300.0)) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, _json_or_text(resp))
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if isinstance(chunk, dict) and "error" in chunk:  # an error after the stream started
                    raise ApiError(resp.status_code, chunk)
                yield chunk

    # --- models, workers, quotas ---
    def list_models(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/v1/models")["data"]
        return result

    def download_model(self, model_id: str, dest: str | Path) -> Path:
        """The adapter (or model) as a tar file at `dest`, streamed to disk."""
        dest = Path(dest)
        with self._http.stream("GET", f"/models/{model_id}/content") as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, _json_or_text(resp))
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
        return dest

    def delete_model(self, model_id: str) -> JSON:
        result: JSON = self._call("DELETE", f"/models/{model_id}")
        return result

    def workers(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/workers")["data"]
        return result

    def quota(self) -> JSON:
        result: JSON = self._call("GET", "/quota")
        return result

    def usage(self) -> JSON:
        result: JSON = self._call("GET", "/usage")
        return result


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text
