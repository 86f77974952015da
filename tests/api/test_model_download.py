"""GET /models/{id}/content streams the adapter's tar as it is made (common/services/models.py
`adapter_archive`): the first bytes leave before the last file is read, nothing of the model's size is written
to disk or held in memory first, and the archive is byte for byte what tarfile writes for the same members. A
real uvicorn, because the test client collects a whole response before handing it over."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from common.artifacts import get_store
from common.db import session_scope
from common.models import Model
from common.services.models import adapter_archive
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import assert_error, auth
from tests.support.servers import uvicorn_in_thread

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    from api.main import create_app

    with uvicorn_in_thread(create_app()) as url:
        yield url


def _publish(tenant_id: str, files: dict[str, bytes]) -> Model:
    """A published adapter of the tenant whose store folder holds `files`, in this order in its manifest."""
    job_id = make_job_row(tenant_id, status="succeeded")
    storage_key = f"models/{tenant_id}/{job_id}/attempt-1"
    store = get_store()
    entries: list[dict[str, Any]] = []
    manifest = {"files": entries, "base_model": "tiny-llama"}
    for path, content in files.items():
        with store.writer(f"{storage_key}/{path}") as out:
            out.write(content)
        entries.append({"path": path, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    with session_scope() as session:
        row = Model(id=f"ft:tiny-llama:{job_id}", tenant_id=tenant_id, job_id=job_id, base_model="tiny-llama",
                    storage_key=storage_key, manifest=manifest, bytes=sum(map(len, files.values())))
        session.add(row)
        session.flush()
        session.refresh(row)
        session.expunge(row)
    return row


def _tarfile_bytes(files: dict[str, bytes], manifest: dict[str, Any], created: datetime) -> bytes:
    """What the download used to be: tarfile's archive of the same members, built whole."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in [*files.items(), ("manifest.json", json.dumps(manifest, indent=2).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = int(created.timestamp())
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


@pytest.mark.parametrize("sizes", [(0, 1), (511, 512, 513), (3 * MIB + 7, 10240)])
def test_streamed_archive_is_byte_for_byte_what_tarfile_writes(sizes: tuple[int, ...]) -> None:
    tenant_id, _ = make_tenant()
    files = {f"part-{i}.bin": bytes([65 + i]) * size for i, size in enumerate(sizes)}
    row = _publish(tenant_id, files)
    streamed = b"".join(adapter_archive(get_store(), row))
    assert streamed == _tarfile_bytes(files, row.manifest, row.created_at)


def test_download_starts_before_the_last_file_is_read_and_unpacks_to_the_same_files(live_url: str) -> None:
    tenant_id, key = make_tenant()
    files = {"adapter_model.safetensors": b"w" * (32 * MIB),
             "adapter_config.json": json.dumps({"r": 8, "note": "as published"}).encode()}
    row = _publish(tenant_id, files)
    later = json.dumps({"r": 8, "note": "changed late"}).encode()  # the same size
    assert len(later) == len(files["adapter_config.json"])
    with httpx.Client(base_url=live_url, timeout=30) as client, \
            client.stream("GET", f"/models/{row.id}/content", headers=auth(key)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/x-tar"
        name = row.id.replace(":", "_") + ".tar"
        assert resp.headers["content-disposition"] == f'attachment; filename="{name}"'
        pieces = resp.iter_bytes()
        first = next(pieces)
        assert first  # the archive has begun while 32 MiB of the first file are still to come
        # A streamed archive reads the last file only when it gets there, so it holds the late content;
        # an archive built whole before its first byte was sent would hold the published one.
        with get_store().writer(f"{row.storage_key}/adapter_config.json") as out:
            out.write(later)
        archive = first + b"".join(pieces)
    got = _members(archive)
    assert got["adapter_model.safetensors"] == files["adapter_model.safetensors"]
    assert got["adapter_config.json"] == later
    assert json.loads(got["manifest.json"]) == row.manifest
    assert archive == _tarfile_bytes({**files, "adapter_config.json": later}, row.manifest, row.created_at)


def test_another_tenants_model_is_404_and_a_broken_one_fails_before_the_first_byte(live_url: str) -> None:
    owner, _ = make_tenant()
    _, other_key = make_tenant()
    row = _publish(owner, {"adapter_model.safetensors": b"x" * 1000})
    with httpx.Client(base_url=live_url, timeout=30) as client:
        assert_error(client.get(f"/models/{row.id}/content", headers=auth(other_key)), 404, "model_not_found")
    broken_tenant, broken_key = make_tenant()
    broken = _publish(broken_tenant, {"adapter_model.safetensors": b"x" * 1000})
    with get_store().writer(f"{broken.storage_key}/adapter_model.safetensors") as out:
        out.write(b"x" * 10)  # shorter than its manifest: refused whole, not sent as a truncated tar
    with httpx.Client(base_url=live_url, timeout=30) as client:
        assert client.get(f"/models/{broken.id}/content", headers=auth(broken_key)).status_code == 500
