"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records every request and
verifies its signature with the `standardwebhooks` package (what a receiver would use), answering from a script
of statuses (the last one repeats), over https given a certificate. `hold_next` makes it keep the next request
open until `release()`."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    verified: bool | None  # None: no secret to verify with yet

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=lambda: [200])
    secrets: list[str] = field(default_factory=list)  # a request verifies if one of these verifies it
    response_body: bytes = b"ok"
    extra_headers: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    tls: tuple[str, str] | None = None  # (certificate, key) files: serve https

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._hold = threading.Event()
        self._holding = threading.Event()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._on_request(self, body)

            def do_GET(self) -> None:  # noqa: N802
                receiver._on_request(self, b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def verify(self, body: bytes, headers: dict[str, str]) -> bool | None:
        if not self.secrets:
            return None
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                return True
            except WebhookVerificationError:
                continue
        return False

    def _on_request(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if self._hold.is_set():
            self._hold.clear()
            self._holding.set()
            self._released.wait(60)
        with self._lock:
            status = self.statuses[min(len(self.received), len(self.statuses) - 1)]
            self.received.append(Received(handler.path, headers, body, status, self.verify(body, headers)))
        try:
            handler.send_response(status)
            for name, value in self.extra_headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(self.response_body)))
            handler.end_headers()
            handler.wfile.write(self.response_body)
        except OSError:  # the sender went away (killed, or cut off at its deadline)
            pass

    def hold_next(self) -> None:
        """Keep the next request open (unanswered) until `release()`."""
        self._released.clear()
        self._hold.set()

    def wait_holding(self, timeout: float) -> bool:
        return self._holding.wait(timeout)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
