"""The artifact store's interface, `ArtifactStore`, and the key rule every store applies (`check_key`). The stores
are in common/artifacts.py (a local folder, and `get_store`) and common/artifacts_s3.py (an S3 bucket)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from common.errors import InvalidRequest


def check_key(key: str) -> str:
    """A key is relative and never climbs: refused (400) otherwise, whatever the store."""
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise InvalidRequest(f"invalid artifact key {key!r}")
    return key


class ArtifactStore(Protocol):
    """What any artifact store offers. `put_dir`, `fetch_dir` and `local_copy` are written once, here, on top of
    the per-store methods."""

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]: ...
    def put_file(self, key: str, src: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def fetch(self, key: str, dest: Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def list_prefix(self, prefix: str) -> list[str]: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def check(self) -> None: ...

    def put_dir(self, prefix: str, src: Path) -> list[dict[str, int | str]]:
        """Upload every file under `src` to `prefix/<relative path>`; returns [{path, bytes}]."""
        out: list[dict[str, int | str]] = []
        for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
            rel = path.relative_to(src).as_posix()
            self.put_file(f"{prefix.rstrip('/')}/{rel}", path)
            out.append({"path": rel, "bytes": path.stat().st_size})
        return out

    def fetch_dir(self, prefix: str, dest: Path) -> Path:
        """Every file under `prefix/` into `dest/<relative path>`."""
        base = prefix.rstrip("/") + "/"
        for key in self.list_prefix(prefix):
            self.fetch(key, dest / key[len(base):])
        return dest

    @contextmanager
    def local_copy(self, key: str, work_dir: Path) -> Iterator[Path]:
        """A private copy of `key` in `work_dir` (a folder of the caller's own), removed when the block ends."""
        work_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=".copy-", suffix="-" + key.rsplit("/", 1)[-1])  # .csv.gz
        os.close(fd)
        try:
            yield self.fetch(key, Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
