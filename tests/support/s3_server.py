"""A real S3-compatible server on loopback for the artifact-store tests."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from common.artifacts import ArtifactStore
from common.artifacts_s3 import S3ArtifactStore
from tests.support.servers import BIN, free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tunequeue-test", "AWS_SECRET_ACCESS_KEY": "tunequeue-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint_url: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"])

    def new_bucket(self) -> str:
        name = f"tq-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """What a TuneQueue process needs to reach it (plus TUNEQUEUE_ARTIFACTS=s3://bucket/prefix)."""
        return {**CREDENTIALS, "TUNEQUEUE_S3_ENDPOINT_URL": self.endpoint_url}


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto's standalone server (`moto_server -p PORT`) on 127.0.0.1: a stand-in for S3, because no real S3 (nor
    MinIO) can run here. It speaks S3's HTTP API — multipart uploads, ranged and streamed GETs, listings — to the
    real boto3 client our store uses; nothing of ours is replaced. Stopped when the block ends."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "moto.log", "wb")  # noqa: SIM115 — lives as long as the process
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: "
                                   f"{(log_dir / 'moto.log').read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url, timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not answer within 30 s")
            time.sleep(0.2)
        yield S3Server(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def assert_stored_where_the_stack_stores(store: ArtifactStore, tenant_id: str, job_id: str) -> None:
    """The tenant's upload, the job's checkpoints and its adapter are in `store`; with an S3 store, nothing of the
    tenant's is in the local artifacts folder of the test environment (no process wrote to a shared folder)."""
    from tests.support.environment import ROOT

    assert store.list_prefix(f"files/{tenant_id}"), f"no upload of {tenant_id} in {store!r}"
    assert store.list_prefix(f"checkpoints/{tenant_id}/{job_id}"), f"no checkpoint of {job_id} in {store!r}"
    model = store.list_prefix(f"models/{tenant_id}/{job_id}")
    assert any(k.endswith("/adapter_model.safetensors") for k in model), f"no adapter of {job_id}: {model}"
    if isinstance(store, S3ArtifactStore):
        local = [p for p in (ROOT / "artifacts").rglob("*") if tenant_id in p.parts or job_id in p.parts]
        assert local == [], f"artifacts of an S3 stack in the local folder: {local}"
