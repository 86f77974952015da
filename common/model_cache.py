"""Base models kept in an S3-compatible bucket (a TUNEQUEUE_BASE_MODELS entry whose `path` is s3://bucket/prefix),
fetched into this host's bounded model cache (TUNEQUEUE_MODEL_CACHE_DIR, TUNEQUEUE_MODEL_CACHE_BYTES), so that no
process reads a model from another host's folder. The GPU worker fetches the whole folder for its training child
(which only ever sees the local copy), serve for loading, the validation worker and the API only the tokenizer's
files (no weights).

One entry per source and version: `<root>/<sha of the source>-<sha of its listing>[-tok]/`, the listing being
every object's name, size and ETag, so a model changed in the bucket is a new entry and is fetched again. An
entry is downloaded into a `.tmp-…` folder and renamed into place: it exists whole or not at all. Processes of
one host share the folder: a file lock serialises each source's fetch (two fetchers of one model fetch it once)
and another guards the index (renames, pins, eviction).

Bounded: after each fetch, the least recently used entries are removed until the cache holds at most
`max_bytes`, never one that is in use. In use means pinned: a pin is a file in the entry's `pins/` on which a
live process holds a shared lock, for the duration of a `use` block, or (`hold`) for as long as a holder folder
exists — the attempt folder of the training child that reads the model. A pin whose process died (the kernel
drops its lock) or whose holder is gone no longer counts. Entries in use may keep the cache above its bound for a
while; a single model larger than the bound is refused. Processes that share one cache folder must see the
holders' paths alike (one host; containers mounting the same work and cache volumes at the same paths)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from common.artifacts_s3 import split_s3
from common.errors import NotReady
from common.settings import Settings, get_settings

log = logging.getLogger("tunequeue.model_cache")

MODEL_UNAVAILABLE = "base_model_unavailable"
Part = Literal["all", "tokenizer"]
MAX_CONFIG_BYTES = 2**20  # a config.json is a few KiB; anything larger is not one
# What a tokenizer never needs: the weights (every format a model folder may carry them in).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")


@dataclass(frozen=True)
class RemoteFile:
    name: str  # relative to the model's folder
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Cached:
    path: Path  # the model's folder (config.json, tokenizer files, weights unless part is "tokenizer")
    fetched: bool  # this call downloaded it (False: it was in the cache already)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _locked_by_someone(path: Path) -> bool:
    """Another open file (this process's or another's) holds a lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass
class _Pin:
    fd: int
    path: Path
    holder: Path | None

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


class ModelCache:
    def __init__(self, root: Path, max_bytes: int, *, client: Any = None, endpoint_url: str | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._client = client
        self.endpoint_url = endpoint_url
        self._held: list[_Pin] = []  # `hold` pins of this process, released once their holder is gone
        self._held_lock = threading.Lock()
        self._configs: dict[str, tuple[str, dict[str, Any]]] = {}  # source → (ETag, config.json): remote_config
        self._configs_missing: set[str] = set()  # the sources whose missing config.json was logged

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        return self._client

    # --- the two ways to use a model ---

    @contextmanager
    def use(self, source: str, *, part: Part = "all", name: str | None = None) -> Iterator[Cached]:
        """The model's local folder, in use (never evicted) until the block ends."""
        cached, pin = self._ensure(source, part, name, holder=None)
        try:
            yield cached
        finally:
            pin.release()

    def hold(self, source: str, holder: Path, *, part: Part = "all", name: str | None = None) -> Cached:
        """The model's local folder, in use for as long as `holder` (a folder of the caller's, such as a training
        attempt's) exists and this process lives."""
        cached, pin = self._ensure(source, part, name, holder=holder)
        with self._held_lock:
            self._held.append(pin)
        return cached

    def release_finished(self) -> None:
        """Drop this process's `hold` pins whose holder folder is gone (the attempt ended)."""
        with self._held_lock:
            done = [pin for pin in self._held if pin.holder is not None and not pin.holder.exists()]
            self._held = [pin for pin in self._held if pin not in done]
        for pin in done:
            pin.release()

    # --- reading config.json alone, for the memory estimate ---

    def remote_config(self, source: str) -> dict[str, Any] | None:
        """The model's config.json read from the bucket, parsed, without fetching anything else: what placement's
        memory estimate needs (common/scheduling/placement.py). Kept per process by source and ETag: each call is one
        conditional GET (If-None-Match), whose body (a few KiB) comes only when the object changed. None when there
        is no readable config.json (no such object or bucket, no access, the server does not answer, not a JSON
        object): the job then has no estimate, as a hub model's, and the first such answer per source is logged."""
        from botocore.exceptions import BotoCoreError, ClientError

        known = self._configs.get(source)
        try:
            bucket, prefix = split_s3(source)
            key = f"{prefix}/config.json" if prefix else "config.json"
            got = self.client.get_object(Bucket=bucket, Key=key, **({"IfNoneMatch": known[0]} if known else {}))
            with contextlib.closing(got["Body"]) as body:
                if int(got.get("ContentLength") or 0) > MAX_CONFIG_BYTES:
                    raise ValueError(f"config.json is over {MAX_CONFIG_BYTES} bytes")
                config = json.loads(body.read())
            if not isinstance(config, dict):
                raise ValueError("config.json is not a JSON object")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("304", "NotModified") and known is not None:
                return known[1]  # unchanged since it was read
            self._no_config(source, code or str(exc))
            return None
        except (BotoCoreError, ValueError) as exc:  # no answer; a bad s3:// path; not JSON
            self._no_config(source, str(exc))
            return None
        self._configs[source] = (str(got.get("ETag", "")), config)
        self._configs_missing.discard(source)
        return config

    def _no_config(self, source: str, why: str) -> None:
        self._configs.pop(source, None)
        if source not in self._configs_missing:
            self._configs_missing.add(source)
            log.warning("base model %s has no memory estimate: its config.json cannot be read from the bucket (%s); "
                        "its jobs may go to any worker of the pool, and batch_size auto keeps the default "
                        "micro-batch", source, why)

    # --- fetching ---

    def _ensure(self, source: str, part: Part, name: str | None, holder: Path | None) -> tuple[Cached, _Pin]:
        self.release_finished()
        what = f"base model {name!r} ({source})" if name else f"base model {source}"
        files = self._listing(source, what)
        whole = self.root / self._entry_name(source, "all", files)
        files = self._part(files, part)
        entry = self.root / self._entry_name(source, part, files)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._index():
            if (found := self._present(entry, whole)) is not None:
                return Cached(found / "model", False), self._pin(found, holder)
        need = sum(f.size for f in files)
        if need > self.max_bytes:
            raise NotReady(f"{what} is {need / 2**30:.2f} GiB, more than the model cache may hold "
                           f"(TUNEQUEUE_MODEL_CACHE_BYTES={self.max_bytes}); raise TUNEQUEUE_MODEL_CACHE_BYTES on "
                           "this host", param="base_model", code=MODEL_UNAVAILABLE)
        with _flock(self.root / f".fetch-{self._source_hash(source)}.lock"):  # one fetcher per source and host
            with self._index():
                if (found := self._present(entry, whole)) is not None:  # another process fetched it meanwhile
                    return Cached(found / "model", False), self._pin(found, holder)
                self._evict(room_for=need, keep=set())
            for stale in self.root.glob(f".tmp-{self._source_hash(source)}-*"):  # its fetcher died: this one
                shutil.rmtree(stale, ignore_errors=True)                          # holds the lock now
            tmp = self.root / f".tmp-{self._source_hash(source)}-{secrets.token_hex(4)}"
            try:
                self._download(source, files, tmp / "model", what)
                if self._entry_name(source, part, self._part(self._listing(source, what), part)) != entry.name:
                    raise NotReady(f"{what} changed in the bucket while it was fetched; try again",
                                   param="base_model", code=MODEL_UNAVAILABLE)  # never a copy of two versions
                (tmp / "entry.json").write_text(json.dumps({
                    "source": source, "part": part, "bytes": need, "fetched_at": time.time(),
                    "files": [{"name": f.name, "size": f.size, "etag": f.etag} for f in files]}))
                (tmp / "pins").mkdir()
                with self._index():
                    os.rename(tmp, entry)
                    pin = self._pin(entry, holder)
                    self._drop_other_versions(source, part, entry)
                    self._evict(room_for=0, keep={entry.name})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %s into %s (%d bytes)", what, entry, need)
        return Cached(entry / "model", True), pin

    def _listing(self, source: str, what: str) -> list[RemoteFile]:
        """The model's files in the bucket (one paginated listing: no download); NotReady with the fix when the
        source cannot be a model."""
        from botocore.exceptions import BotoCoreError, ClientError

        fix = "fix its path in TUNEQUEUE_BASE_MODELS or upload the model folder there (config.json, the tokenizer's " \
              "files, *.safetensors)"
        try:
            bucket, prefix = split_s3(source)
        except ValueError as exc:
            raise NotReady(f"{what}: {exc}; {fix}", param="base_model", code=MODEL_UNAVAILABLE) from None
        base = f"{prefix}/" if prefix else ""
        files = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
                for item in page.get("Contents", []):
                    rel = item["Key"][len(base):]
                    if rel and not rel.endswith("/"):
                        files.append(RemoteFile(rel, item["Key"], int(item["Size"]), str(item.get("ETag", ""))))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise NotReady(f"{what}: the bucket {bucket!r} does not exist; {fix}", param="base_model",
                               code=MODEL_UNAVAILABLE) from None
            raise NotReady(f"{what} cannot be listed ({code or exc}); check this host's S3 credentials "
                           f"(AWS_*) and TUNEQUEUE_S3_ENDPOINT_URL, or {fix}", param="base_model",
                           code=MODEL_UNAVAILABLE) from None
        except BotoCoreError as exc:
            raise NotReady(f"{what}: the S3 server does not answer ({exc}); check TUNEQUEUE_S3_ENDPOINT_URL on "
                           "this host", param="base_model", code=MODEL_UNAVAILABLE) from None
        if not any(f.name == "config.json" for f in files):
            held = f"holds {len(files)} files but no config.json" if files else "holds no files"
            raise NotReady(f"{what} {held}; {fix}", param="base_model", code=MODEL_UNAVAILABLE)
        return sorted(files, key=lambda f: f.name)

    @staticmethod
    def _part(files: list[RemoteFile], part: Part) -> list[RemoteFile]:
        return [f for f in files if not f.name.endswith(WEIGHT_SUFFIXES)] if part == "tokenizer" else files

    def _download(self, source: str, files: list[RemoteFile], dest: Path, what: str) -> None:
        bucket, _ = split_s3(source)
        dest = dest.resolve()
        for f in files:
            target = dest / f.name
            if dest not in target.resolve().parents:  # a key with ../ in it would climb out of the cache
                raise NotReady(f"{what} has a file named {f.name!r}, which cannot be stored in a folder",
                               param="base_model", code=MODEL_UNAVAILABLE)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(bucket, f.key, str(target))
            except Exception as exc:
                raise NotReady(f"{what}: fetching {f.name} failed ({type(exc).__name__}: {exc})",
                               param="base_model", code=MODEL_UNAVAILABLE) from exc
            if target.stat().st_size != f.size:
                raise NotReady(f"{what}: {f.name} changed while it was fetched; try again",
                               param="base_model", code=MODEL_UNAVAILABLE)

    # --- the index: entries, pins, eviction (callers hold the index lock) ---

    @contextmanager
    def _index(self) -> Iterator[None]:
        with _flock(self.root / ".lock"):
            yield

    @staticmethod
    def _source_hash(source: str) -> str:
        return hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:16]

    def _entry_name(self, source: str, part: Part, files: list[RemoteFile]) -> str:
        listing = "\n".join(f"{f.name}\t{f.size}\t{f.etag}" for f in files)
        version = hashlib.sha256(listing.encode()).hexdigest()[:16]
        return f"{self._source_hash(source)}-{version}" + ("-tok" if part == "tokenizer" else "")

    @staticmethod
    def _complete(entry: Path) -> bool:
        return (entry / "entry.json").is_file()

    def _present(self, entry: Path, whole: Path) -> Path | None:
        """The entry, or the whole model's of the same version (a tokenizer is in it too)."""
        return next((found for found in (entry, whole) if self._complete(found)), None)

    def _pin(self, entry: Path, holder: Path | None) -> _Pin:
        """Mark the entry in use by this process (while `holder` exists, if given), and as used now."""
        path = entry / "pins" / f"{secrets.token_hex(8)}.json"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)  # held until released, or until this process dies
        os.write(fd, json.dumps({"pid": os.getpid(), "holder": str(holder.resolve()) if holder else None}).encode())
        now = time.time_ns()  # finer than the file system's own clock: two uses in a row keep their order
        os.utime(entry / "entry.json", ns=(now, now))  # its mtime is the entry's last use
        return _Pin(fd, path, holder.resolve() if holder else None)

    def _in_use(self, entry: Path) -> bool:
        """A live pin: a process holds its lock and its holder (if any) exists. Dead pins are removed."""
        live = False
        for pin in (entry / "pins").glob("*.json"):
            if not _locked_by_someone(pin):
                pin.unlink(missing_ok=True)
                continue
            try:
                holder = json.loads(pin.read_text()).get("holder")
            except (OSError, ValueError):
                holder = None
            live = live or holder is None or Path(holder).exists()
        return live

    def entries(self) -> list[tuple[Path, dict[str, Any], int]]:
        """(entry, its entry.json, last use) of every complete entry, least recently used first."""
        found = []
        for entry in self.root.iterdir() if self.root.is_dir() else []:
            if entry.name.startswith(".") or not self._complete(entry):
                continue
            with contextlib.suppress(OSError, ValueError):
                found.append((entry, json.loads((entry / "entry.json").read_text()),
                              (entry / "entry.json").stat().st_mtime_ns))
        return sorted(found, key=lambda e: e[2])

    def _remove(self, entry: Path) -> None:
        trash = self.root / f".trash-{entry.name}-{secrets.token_hex(4)}"
        os.rename(entry, trash)  # gone from the index at once; the files follow
        shutil.rmtree(trash, ignore_errors=True)
        log.info("evicted %s from the model cache", entry.name)

    def _drop_other_versions(self, source: str, part: Part, current: Path) -> None:
        """Older versions of a source that changed in the bucket, unless in use."""
        prefix = self._source_hash(source) + "-"
        for entry, meta, _ in self.entries():
            if entry != current and entry.name.startswith(prefix) and meta.get("part") == part \
                    and not self._in_use(entry):
                self._remove(entry)

    def _evict(self, room_for: int, keep: set[str]) -> None:
        self._sweep()
        entries = self.entries()
        total = sum(int(meta["bytes"]) for _, meta, _ in entries)
        for entry, meta, _ in entries:
            if total + room_for <= self.max_bytes:
                return
            if entry.name in keep or self._in_use(entry):
                continue
            self._remove(entry)
            total -= int(meta["bytes"])
        if total + room_for > self.max_bytes:
            log.warning("the model cache %s holds %d bytes in use, above TUNEQUEUE_MODEL_CACHE_BYTES=%d; they are "
                        "removed once no longer used", self.root, total + room_for, self.max_bytes)

    def _sweep(self) -> None:
        """Removals that a process did not finish."""
        for trash in self.root.glob(".trash-*"):
            shutil.rmtree(trash, ignore_errors=True)


def get_model_cache(settings: Settings | None = None) -> ModelCache:
    settings = settings or get_settings()
    return _cache(str(settings.model_cache_path), settings.model_cache_bytes, settings.s3_endpoint_url or None)


@lru_cache(maxsize=4)
def _cache(root: str, max_bytes: int, endpoint_url: str | None) -> ModelCache:
    """One per process and folder: its boto3 client is costly to make and safe to share between threads."""
    return ModelCache(Path(root), max_bytes, endpoint_url=endpoint_url)
