"""The live service: uvicorn, a Celery worker and the inference server (`python -m worker.serve`) as subprocesses,
on their own queue and ports, over the real Postgres/Redis (tests/support/servers.py starts and stops them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import LiveService, live_stack


@pytest.fixture(scope="session")
def live_service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_stack("e2e", tmp_path_factory.mktemp("service-logs")) as service:
        yield service
