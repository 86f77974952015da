"""Fixtures for worker tests: one CPU thread, the tiny base model (built once per session) and job directories
(tests/support/training.py writes them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.training import fixed_reply_rows, write_job_dir
from worker.tiny_model import build_tiny_model


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread() -> Any:
    """The tiny model's matrices are too small to gain from threads, and on a busy 2-core machine OpenMP's
    spinning threads make each step ten times slower. Restored after the worker tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base-models") / "tiny-llama")


@pytest.fixture(scope="session")
def write_job() -> Callable[..., Path]:
    """`write_job(job_dir, base_model_path, rows, **options)`, see `write_job_dir`."""
    return write_job_dir


@pytest.fixture(scope="session")
def fixed_rows() -> list[dict[str, Any]]:
    return fixed_reply_rows()
