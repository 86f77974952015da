"""The live service: uvicorn, a Celery worker and the inference server (`python -m worker.serve`) as subprocesses,
on their own queue and ports, over the real Postgres/Redis (tests/support/servers.py starts and stops them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3_server import s3_server
from tests.support.servers import LiveService, live_stack


@pytest.fixture(scope="session")
def live_service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    from common.artifacts import get_store

    with live_stack("e2e", tmp_path_factory.mktemp("service-logs")) as service:
        service.store = get_store()
        yield service


@pytest.fixture(scope="session")
def live_service_s3(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The same stack with TUNEQUEUE_ARTIFACTS=s3://bucket/tq on an S3-compatible server on loopback (moto's, a
    stand-in for S3: tests/support/s3_server.py); its processes share no artifacts folder."""
    from common.artifacts_s3 import S3ArtifactStore

    logs = tmp_path_factory.mktemp("service-s3-logs")
    with s3_server(logs) as server:
        bucket = server.new_bucket()
        env = {**server.env(), "TUNEQUEUE_ARTIFACTS": f"s3://{bucket}/tq"}
        with live_stack("e2e-s3", logs, env) as service:
            service.store = S3ArtifactStore(bucket, "tq", client=server.client())
            yield service


@pytest.fixture(params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> LiveService:
    """A test taking `stack` runs against the local-folder store and again against the S3 store."""
    service: LiveService = request.getfixturevalue("live_service" if request.param == "local" else "live_service_s3")
    return service
