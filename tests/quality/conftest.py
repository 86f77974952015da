"""Fixtures of the quality tests: SmolLM2-135M-Instruct built once per machine (tests/support/real_model.py), and
the live service (API, a Celery worker on the training and validation queues, the inference server) with that
model registered as it comes: its tokenizer's own chat template, no `template` name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import REAL_MODEL_ID
from tests.support.environment import TINY_MODEL
from tests.support.real_model import require_real_model
from tests.support.servers import LiveService, live_stack


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
    return require_real_model()


@pytest.fixture(scope="session")
def quality_service(real_model: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[LiveService]:
    base_models = {"tiny-llama": {"path": str(TINY_MODEL), "template": "chatml"},
                   REAL_MODEL_ID: {"path": str(real_model)}}
    # One thread for the training child and the inference server, as for the training tests' children
    # (tests/support/training.py): the two would otherwise spin on the same two cores.
    env = {"TUNEQUEUE_BASE_MODELS": json.dumps(base_models), "OMP_NUM_THREADS": "1", "TUNEQUEUE_SERVE_THREADS": "1"}
    with live_stack("quality", tmp_path_factory.mktemp("quality-service-logs"), env, ready_timeout=120) as service:
        yield service
