"""`S3ArtifactStore`: the artifact store in an S3-compatible bucket (AWS S3, MinIO), TUNEQUEUE_ARTIFACTS=
s3://bucket/prefix with TUNEQUEUE_S3_ENDPOINT_URL for a server other than AWS and the standard AWS credential
variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).

Writes stream: a writer sends every `part_size` bytes as one part of a multipart upload and completes it when its
block succeeds (a file smaller than one part is a single PUT), so neither a large upload nor a checkpoint is held
in memory, and an object appears whole or not at all: a failed block aborts the upload. Reads stream the object's
body; `fetch` writes beside the destination and renames."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

from common.artifact_protocol import ArtifactStore, check_key

PART_SIZE = 16 * 1024 * 1024  # S3's smallest part is 5 MiB (all but the last)
COPY_CHUNK = 1024 * 1024


class _MultipartWriter(io.RawIOBase):
    """A write-only stream that uploads each full part as it fills; `finish` completes, `abort` discards."""

    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        self.store, self.key = store, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.buffer += view
        while len(self.buffer) >= self.store.part_size:
            self._send(bytes(self.buffer[:self.store.part_size]))
            del self.buffer[:self.store.part_size]
        return len(view)

    def _send(self, body: bytes) -> None:
        s3, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            self.upload_id = s3.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        etag = s3.upload_part(Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                              Body=body)["ETag"]
        self.parts.append({"ETag": etag, "PartNumber": number})

    def finish(self) -> None:
        s3, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            s3.put_object(Bucket=bucket, Key=self.key, Body=bytes(self.buffer))
        else:
            if self.buffer:
                self._send(bytes(self.buffer))
            s3.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id,
                                         MultipartUpload={"Parts": self.parts})
        self.buffer.clear()

    def abort(self) -> None:
        self.buffer.clear()
        if self.upload_id is not None:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key,
                                                     UploadId=self.upload_id)


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket[/prefix] (the artifact store's location, an s3:// base model); a ValueError
    that says what is wrong otherwise."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{url!r} is not s3://bucket/prefix")
    return parsed.netloc, parsed.path.strip("/")


class S3ArtifactStore(ArtifactStore):
    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, endpoint_url: str | None = None,
                 part_size: int = PART_SIZE) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, part_size: int = PART_SIZE) -> S3ArtifactStore:
        try:
            bucket, prefix = split_s3(url)
        except ValueError:
            raise ValueError(f"TUNEQUEUE_ARTIFACTS={url!r} is not s3://bucket[/prefix]") from None
        return cls(bucket, prefix, endpoint_url=endpoint_url, part_size=part_size)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unkey(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        out = _MultipartWriter(self, self._key(key))
        try:
            yield cast(BinaryIO, out)
            out.finish()
        except BaseException:
            out.abort()
            raise

    def put_file(self, key: str, src: Path) -> None:
        with self.writer(key) as out, open(src, "rb") as inp:
            while chunk := inp.read(COPY_CHUNK):
                out.write(chunk)

    def open(self, key: str) -> BinaryIO:
        """The object's body, streamed (a FileNotFoundError when there is none, as the local store's)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        return cast(BinaryIO, body)

    def fetch(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out, self.open(key) as body:
                while chunk := body.read(COPY_CHUNK):
                    out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return cast(dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])

    def _names(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix.rstrip("/")) + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"]

    def list_prefix(self, prefix: str) -> list[str]:
        """Keys of the objects under `prefix/`, sorted."""
        return sorted(self._unkey(name) for name in self._names(prefix))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        names = list(self._names(prefix))
        for start in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": name} for name in names[start:start + 1000]], "Quiet": True})

    def check(self) -> None:
        """The bucket answers and takes a write (readiness: /readyz)."""
        probe = self._key(".readyz")
        self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
        self.client.delete_object(Bucket=self.bucket, Key=probe)
