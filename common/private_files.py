"""Secrets on disk (the development API key, the development serve token): files only their owner may read, from
the moment they exist. Written under a scratch name created 0600, then put in place whole, so nobody ever reads a
file that is half written or, for a moment, readable by everyone (a chmod after the write would leave that
window under the usual 022 umask)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str, *, replace: bool) -> bool:
    """`text` into `path`, mode 0600. With `replace`, an existing file is replaced; without, it is kept (several
    processes racing to make the file all end up reading the first one's). Returns whether this call wrote it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if replace:
            os.replace(scratch, path)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
            return True
        return False
    finally:
        scratch.unlink(missing_ok=True)
