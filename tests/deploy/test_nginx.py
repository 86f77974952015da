"""deploy/nginx.conf in the real nginx: `nginx -t` accepts it, and nginx running it in front of a stand-in upstream
(a plain HTTP server in place of the `api` service) passes every path to the API with the client's headers,
streams Server-Sent Events without buffering or compressing them, and streams an upload as large as the API
accepts to the API instead of refusing or spooling it."""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.deploy import NGINX_CONF, nginx_conf, require_tool, running_nginx
from tests.support.servers import free_port
from tests.support.waiting import wait_until

STREAM_BYTES = 64 * 1024 * 1024  # what the stand-in streams to a client that reads nothing
UPLOAD_PEEK = 1024 * 1024  # how much of an upload the stand-in reads before it answers


@dataclass
class Seen:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body_read: int = 0


@dataclass
class StandInApi:
    """What reached the upstream, and how far it got streaming to a client that reads nothing."""

    seen: list[Seen] = field(default_factory=list)
    streamed: dict[str, int] = field(default_factory=dict)  # bytes the API got out, by path

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.seen.append(Seen(self.command, self.path, self.request_version, dict(self.headers)))
                if self.path.endswith("?big"):
                    self.stream_big()
                else:
                    self.answer(b"data: " + b"x" * 4000 + b"\n\n", "text/event-stream")

            def do_POST(self) -> None:
                seen = Seen(self.command, self.path, self.request_version, dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    seen.body_read = len(self.rfile.read(min(length, UPLOAD_PEEK)))
                    self.close_connection = True
                api.seen.append(seen)
                self.answer(b'{"ok": true}', "application/json")

            def answer(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def stream_big(self) -> None:
                chunk = b"x" * 65536
                api.streamed[self.path] = 0
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(STREAM_BYTES))
                self.end_headers()
                try:
                    while api.streamed[self.path] < STREAM_BYTES:
                        self.wfile.write(chunk)
                        api.streamed[self.path] += len(chunk)
                except OSError:
                    pass

        return Handler

    def last(self, path: str) -> Seen:
        return wait_until(lambda: next((s for s in reversed(self.seen) if s.path == path), None), 10,
                          f"a request for {path} at the stand-in API")


@dataclass
class Proxy:
    url: str
    port: int
    api: StandInApi


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    api = StandInApi()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with running_nginx(tmp_path_factory.mktemp("nginx"), upstream.server_address[1]) as port:
            yield Proxy(f"http://127.0.0.1:{port}", port, api)
    finally:
        upstream.shutdown()


def test_nginx_t_accepts_the_config(tmp_path: Path) -> None:
    nginx = require_tool("nginx", "nginx")
    conf = nginx_conf(tmp_path, free_port(), free_port())
    done = subprocess.run([nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", ["/", "/healthz", "/files", "/v1/files", "/jobs", "/jobs/ftjob-abc",
                                  "/v1/fine_tuning/jobs", "/v1/models", "/v1/chat/completions", "/v1/completions",
                                  "/metrics"])
def test_every_path_reaches_the_api_over_kept_alive_http_1_1_with_the_client_headers(proxy: Proxy,
                                                                                    path: str) -> None:
    resp = httpx.get(f"{proxy.url}{path}", headers={"Host": "tunequeue.example"}, timeout=10)
    assert resp.status_code == 200, resp.text
    seen = proxy.api.last(path)
    assert seen.version == "HTTP/1.1"
    assert "Connection" not in seen.headers, seen.headers  # "close" would end each upstream connection
    assert seen.headers["Host"] == seen.headers["X-Forwarded-Host"] == "tunequeue.example"
    assert seen.headers["X-Forwarded-For"] == seen.headers["X-Real-IP"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"


STREAMS = ["/jobs/ftjob-abc/events", "/v1/fine_tuning/jobs/ftjob-abc/events", "/v1/chat/completions",
           "/v1/completions"]


@pytest.mark.parametrize("path", STREAMS)
def test_streams_are_not_compressed(proxy: Proxy, path: str) -> None:
    resp = httpx.get(f"{proxy.url}{path}", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert resp.status_code == 200
    assert "Content-Encoding" not in resp.headers, "gzip holds events back until its buffer fills"


def test_the_stand_in_shows_buffering(proxy: Proxy) -> None:
    # The check below can fail: where nginx buffers (location /), it drains the whole response from the API
    # while the client reads nothing.
    with stream_to_a_client_that_reads_nothing(proxy, "/"):
        wait_until(lambda: proxy.api.streamed["/?big"] == STREAM_BYTES, 60, "nginx to buffer the whole stream")


@pytest.mark.parametrize("path", STREAMS)
def test_streams_pass_through_unbuffered(proxy: Proxy, path: str) -> None:
    # Unbuffered, nginx reads from the API only as fast as the client takes: what the API got out is bounded
    # by the sockets' buffers, far below the whole stream.
    with stream_to_a_client_that_reads_nothing(proxy, path):
        time.sleep(2)
        assert proxy.api.streamed[f"{path}?big"] < STREAM_BYTES // 2


@contextlib.contextmanager
def stream_to_a_client_that_reads_nothing(proxy: Proxy, path: str) -> Iterator[None]:
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(f"GET {path}?big HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        proxy.api.last(f"{path}?big")
        yield


@pytest.mark.parametrize("path", ["/files", "/v1/files"])
def test_the_largest_upload_the_api_accepts_streams_to_the_api(proxy: Proxy, path: str) -> None:
    from common.settings import Settings

    # The file plus its multipart framing; only the first MiB is sent: nginx must pass it on without waiting for
    # the rest (and without answering 413 on the announced length).
    length = Settings.model_fields["max_upload_bytes"].default + 64 * 1024
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                       f"Content-Length: {length}\r\n\r\n".encode() + b"x" * UPLOAD_PEEK)
        status_line = client.recv(4096).split(b"\r\n", 1)[0].decode()
    assert status_line.split()[1] == "200", status_line
    seen = proxy.api.last(path)
    assert (seen.method, int(seen.headers["Content-Length"]), seen.body_read) == ("POST", length, UPLOAD_PEEK)


def test_long_requests_and_streams_are_not_timed_out() -> None:
    # Timeouts cannot be waited out in a test: the values are read from the config. Server-wide at least
    # five minutes (a long non-streamed generation); job event streams stay open for an hour or more.
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    server = re.search(r"^server \{(.*)^\}", text, re.S | re.M)
    assert server is not None
    top_level = re.sub(r"location [^{]*\{[^}]*\}", "", server.group(1))
    assert seconds(directive(top_level, "proxy_read_timeout")) >= 300
    events = re.search(r"location /jobs \{([^}]*)\}", text)
    assert events is not None, "no `location /jobs` block"
    assert seconds(directive(events.group(1), "proxy_read_timeout")) >= 3600


def directive(block: str, name: str) -> str:
    values = re.findall(rf"^\s*{name}\s+([^;]+);", block, re.M)
    assert len(values) == 1, f"{name}: {values}"
    return values[0].strip()


def seconds(value: str) -> float:
    scale = {"": 1, "s": 1, "ms": 1e-3, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)?", value)
    return sum(int(number) * scale[unit] for number, unit in parts)
