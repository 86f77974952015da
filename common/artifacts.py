"""Artifact store: uploaded files, checkpoints, adapters, merged models, result and TensorBoard files. Keys are
server-made, '/'-separated.

`ArtifactStore` (common/artifact_protocol.py, re-exported here) is the interface everything is typed against:
streamed writes that become visible atomically, streamed reads, fetch-to-local (one file or a whole prefix).
`LocalArtifactStore` (a folder, the embedded default) is here; `S3ArtifactStore` (s3://bucket/prefix) is in
common/artifacts_s3.py. `get_store` picks one by
TUNEQUEUE_ARTIFACTS. Nobody reads a store's files in place: a process that needs a path fetches into its own work
folder (`local_copy`), so no two processes need to share a folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from common.artifact_protocol import ArtifactStore, check_key

__all__ = ["ArtifactStore", "LocalArtifactStore", "check_key", "get_store"]


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

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

    @contextmanager
    def local_copy(self, key: str, work_dir: Path) -> Iterator[Path]:
        """The stored file itself (read-only): this store is a local folder already."""
        yield self._path(key)

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


def get_store(location: str | None = None) -> ArtifactStore:
    """The store TUNEQUEUE_ARTIFACTS names: s3://bucket/prefix (common/artifacts_s3.py, TUNEQUEUE_S3_ENDPOINT_URL
    and the standard AWS credential variables), else a local folder."""
    from common.settings import get_settings

    settings = get_settings()
    location = location or settings.artifacts
    if location.startswith("s3://"):
        return _s3_store(location, settings.s3_endpoint_url or None)
    return LocalArtifactStore(Path(location).resolve())


@lru_cache(maxsize=8)
def _s3_store(location: str, endpoint_url: str | None) -> ArtifactStore:
    """One per location and process: a boto3 client is costly to make, and safe to share between threads."""
    from common.artifacts_s3 import S3ArtifactStore

    return S3ArtifactStore.from_url(location, endpoint_url=endpoint_url)
