"""One webhook POST, bounded: to the address that was checked (not to whatever the name resolves to a moment
later), redirects not followed, the whole attempt within a deadline, at most MAX_RESPONSE_BYTES of the answer read.

http.client, not a client library: it follows no redirect and pools no connection, and a connection class that
connects to a given address while sending the URL's `Host` (and, for https, checking the certificate against the
URL's host name) is a few lines of it."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from common.webhooks.allow import IPAddress, Target

MAX_RESPONSE_BYTES = 1024
USER_AGENT = "TuneQueue-Webhooks/1"


@dataclass(frozen=True)
class Outcome:
    status: int | None  # None: no HTTP answer (refused, timed out, TLS failure, …)
    excerpt: str | None
    error: str | None  # why it failed; None for a 2xx

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _Pinned:
    """Connects to `address` for whatever host the connection is named after."""

    address: str
    host: str
    port: int
    timeout: float | None
    sock: socket.socket | None

    def _open(self) -> socket.socket:
        return socket.create_connection((self.address, self.port), self.timeout)


class PinnedHTTP(_Pinned, http.client.HTTPConnection):
    def __init__(self, target: Target, address: IPAddress, timeout: float) -> None:
        http.client.HTTPConnection.__init__(self, target.host, target.port, timeout=timeout)
        self.address = str(address)

    def connect(self) -> None:
        self.sock = self._open()


class PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    def __init__(self, target: Target, address: IPAddress, timeout: float) -> None:
        http.client.HTTPSConnection.__init__(self, target.host, target.port, timeout=timeout,
                                             context=ssl.create_default_context())
        self.address = str(address)

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(self._open(), server_hostname=self.host)  # type: ignore[attr-defined]


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")  # Postgres stores no NUL


def post(target: Target, addresses: list[IPAddress], body: bytes, headers: dict[str, str],
         timeout: float) -> Outcome:
    """POST `body` to `target` at the first of `addresses` that accepts a connection, all within `timeout`."""
    deadline = time.monotonic() + timeout
    last_error = "no address to connect to"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        cls = PinnedHTTPS if target.scheme == "https" else PinnedHTTP
        conn = cls(target, address, remaining)
        # a receiver that answers a byte at a time is still cut off at the deadline: shut the socket down
        timer = threading.Timer(remaining, _abort, args=(conn,))
        timer.start()
        try:
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as exc:
                last_error = f"could not connect to {address}: {_describe(exc)}"
                continue
            conn.request("POST", target.target, body=body, headers={
                "Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                **headers})
            resp = conn.getresponse()
            excerpt = _clean(resp.read(MAX_RESPONSE_BYTES).decode("utf-8", errors="replace"))
            if 200 <= resp.status < 300:
                return Outcome(resp.status, excerpt, None)
            if 300 <= resp.status < 400:
                location = _clean((resp.getheader("Location") or "")[:200])
                return Outcome(resp.status, excerpt, f"redirects are not followed (Location: {location}); "
                               "register the final URL")
            return Outcome(resp.status, excerpt, f"the receiver answered {resp.status}; a 2xx acknowledges")
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if time.monotonic() >= deadline:
                return Outcome(None, None, f"no answer within {timeout:g} s")
            return Outcome(None, None, _describe(exc))
        finally:
            timer.cancel()
            conn.close()
    return Outcome(None, None, last_error)


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return _clean(f"{type(exc).__name__}: {text}"[:300])
