"""A POST whose body goes out with `Transfer-Encoding: chunked`, over a raw socket that reads the answer as soon as
there is one: an HTTP client sends its whole body before it reads, so it could not show that a server refused a
body while it was still arriving. Used by the tests of the upload limit and of the inference body limit (serve and
end to end)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class ChunkedAnswer:
    status: int
    body: dict[str, Any]
    sent: int  # bytes of the body handed to the socket before the answer came
    finished: bool  # whether the whole body was sent


def endless_json(prefix: bytes, chunk: int = 64 * 1024, total: int = 64 * 1024 * 1024) -> Iterator[bytes]:
    """The start of a JSON body, then `total` bytes of one string: never valid JSON, only its size matters."""
    yield prefix
    block = b"a" * chunk
    for _ in range(total // chunk):
        yield block


def post_chunked(url: str, path: str, headers: dict[str, str], parts: Iterator[bytes],
                 timeout: float = 60, content_type: str = "application/json") -> ChunkedAnswer:
    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # no megabytes parked in the client's buffer
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    pending = bytearray(f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: {content_type}\r\n"
                        f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
    sent = 0
    finished = False
    answer = b""
    deadline = time.monotonic() + timeout
    try:
        sock.setblocking(False)
        while time.monotonic() < deadline:
            if not pending and not finished:
                part = next(parts, None)
                if part is None:
                    pending += b"0\r\n\r\n"
                    finished = True
                else:
                    pending += f"{len(part):x}\r\n".encode() + part + b"\r\n"
                    sent += len(part)
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 1)
            if readable:
                break
            if writable:
                try:
                    pending = pending[sock.send(pending):]
                except (BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        sock.settimeout(30)
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return ChunkedAnswer(status, json.loads(body[: _length(answer)]), sent, finished)


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30
