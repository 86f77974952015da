"""Artifact store: uploaded files, checkpoints, adapters. Keys are server-made, '/'-separated.

`ArtifactStore` is the interface the serving side is typed against (worker/serve/, common/services/models.py):
streamed writes that become visible atomically, streamed reads, fetch-to-local. `LocalArtifactStore` (a folder)
is its one implementation; the API and the worker use it directly for what only a folder offers (`local_path`,
whole-directory copies)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from common.errors import InvalidRequest


class ArtifactStore(Protocol):
    """What any artifact store offers."""

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


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidRequest(f"invalid artifact key {key!r}")
        return self.root / key

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write to a temporary file beside the target; it appears under `key` only if the block succeeds."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, src: Path) -> None:
        with self.writer(key) as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1024 * 1024)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def fetch(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), dest)
        return dest

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def list_prefix(self, prefix: str) -> list[str]:
        """Keys of the files under `prefix/`, sorted."""
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".partial-"))

    def put_dir(self, prefix: str, src: Path) -> list[dict[str, int | str]]:
        """Upload every file under `src` to `prefix/<relative path>`; returns [{path, bytes}]."""
        out: list[dict[str, int | str]] = []
        for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
            rel = str(path.relative_to(src))
            self.put_file(f"{prefix.rstrip('/')}/{rel}", path)
            out.append({"path": rel, "bytes": path.stat().st_size})
        return out

    def fetch_dir(self, prefix: str, dest: Path) -> Path:
        base = prefix.rstrip("/") + "/"
        for key in self.list_prefix(prefix):
            self.fetch(key, dest / key[len(base):])
        return dest

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".readyz"
        probe.write_bytes(b"ok")
        probe.unlink()


def get_store(location: str | None = None) -> LocalArtifactStore:
    from common.settings import get_settings

    location = location or get_settings().artifacts
    if location.startswith("s3://"):
        raise NotImplementedError("S3 artifact stores are planned; set TUNEQUEUE_ARTIFACTS to a folder for now")
    return LocalArtifactStore(Path(location).resolve())
