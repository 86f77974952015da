"""Fixtures of the quality tests: SmolLM2-135M-Instruct built once per machine (tests/support/real_model.py), and
the live service (API, a Celery worker on the training and validation queues, the inference server) with that
model registered as it comes: its tokenizer's own chat template, no `template` name."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import REAL_MODEL_ID
from tests.support.environment import TINY_MODEL
from tests.support.real_model import RealModelUnavailable, real_model_dir
from tests.support.servers import BIN, LiveService, free_port, start_process, stop_process, wait_ready


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """Scoring in this process on one thread: on a busy 2-core machine OpenMP's spinning threads make each
    forward pass many times slower (as in tests/worker/conftest.py). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_model() -> Path:
    try:
        return real_model_dir()
    except RealModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def quality_service(real_model: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[LiveService]:
    log_dir = tmp_path_factory.mktemp("quality-service-logs")
    port, serve_port = free_port(), free_port()
    queue = f"tunequeue.quality.{secrets.token_hex(4)}"
    base_models = {"tiny-llama": {"path": str(TINY_MODEL), "template": "chatml"},
                   REAL_MODEL_ID: {"path": str(real_model)}}
    env = {**os.environ, "TUNEQUEUE_CELERY_QUEUE": queue, "TUNEQUEUE_VALIDATE_QUEUE": f"{queue}.validate",
           "TUNEQUEUE_BASE_MODELS": json.dumps(base_models), "TUNEQUEUE_PORT": str(port),
           "TUNEQUEUE_SERVE_HOST": "127.0.0.1", "TUNEQUEUE_SERVE_PORT": str(serve_port),
           "TUNEQUEUE_SERVE_URL": f"http://127.0.0.1:{serve_port}",
           # One thread for the training child and the inference server, as for the training tests' children
           # (tests/support/training.py): the two would otherwise spin on the same two cores.
           "OMP_NUM_THREADS": "1", "TUNEQUEUE_SERVE_THREADS": "1"}
    uvicorn = [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    celery = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO", "--concurrency", "1",
              "-Q", f"{queue},{queue}.validate", "--hostname", f"quality-{queue}@%h"]
    procs = {
        "api": start_process("api", uvicorn, env, log_dir),
        "worker": start_process("worker", celery, env, log_dir),
        "serve": start_process("serve", [sys.executable, "-m", "worker.serve"], env, log_dir),
    }
    service = LiveService(url=f"http://127.0.0.1:{port}", queue=queue, log_dir=log_dir, procs=procs,
                          serve_url=f"http://127.0.0.1:{serve_port}")
    try:
        wait_ready(service, timeout=120)
        yield service
    finally:
        for proc in procs.values():
            stop_process(proc)
        from common.redis_client import get_redis

        get_redis().delete(queue, f"{queue}.validate")
