"""A Server-Sent Events client for `GET /jobs/{id}/events` that keeps every frame, in a thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.http import auth


class SseReader(threading.Thread):
    """Follows `GET /jobs/{id}/events` as Server-Sent Events and keeps every frame. `stop_when(frames)` closes the
    connection early (a client that goes away mid-way)."""

    def __init__(self, base_url: str, key: str, job_id: str, *, last_event_id: int | None = None,
                 stop_when: Callable[[list[dict[str, Any]]], bool] | None = None, use_accept: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = f"{base_url}/jobs/{job_id}/events" + ("" if use_accept else "?stream=true")
        self.headers = {**auth(key), "Accept": "text/event-stream"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.stop_when = stop_when
        self.frames: list[dict[str, Any]] = []
        self.status: int | None = None
        self.content_type: str | None = None
        self.error: BaseException | None = None
        self.opened = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(60, read=60)) as resp:
                self.status, self.content_type = resp.status_code, resp.headers.get("content-type")
                self.opened.set()
                frame: dict[str, Any] = {}
                for line in resp.iter_lines():
                    if line == "":
                        if "data" in frame:
                            self.frames.append({"id": frame.get("id"), "event": frame.get("event", "message"),
                                                "data": json.loads(frame["data"])})
                            if self.stop_when is not None and self.stop_when(self.frames):
                                return
                        frame = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        frame[name] = value.removeprefix(" ")
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.opened.set()

    def messages(self) -> list[dict[str, Any]]:
        """The durable events (the frames with an id), in arrival order."""
        return [f for f in self.frames if f["event"] == "message"]

    def finish(self, timeout: float = 30) -> SseReader:
        self.join(timeout)
        assert not self.is_alive(), f"the stream did not end; frames so far: {self.frames}"
        if self.error is not None:
            raise self.error
        return self
