"""Fixtures for worker tests: the tiny base model (built once per session) and job directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.tiny_model import build_tiny_model

FIXED_REPLY = "All systems nominal."


def fixed_reply_rows(n: int = 16) -> list[dict[str, Any]]:
    """Chat rows whose assistant always gives the same answer: easy to learn, so the loss must fall."""
    return [
        {
            "messages": [
                {"role": "system", "content": "You are a terse status bot."},
                {"role": "user", "content": f"Status check number {i}, how is everything?"},
                {"role": "assistant", "content": FIXED_REPLY},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base-models") / "tiny-llama")


def write_job_dir(
    job_dir: Path,
    base_model_path: Path | str,
    rows: list[dict[str, Any]],
    *,
    method: str = "lora",
    n_epochs: int = 5,
    batch_size: int = 4,
    learning_rate: float = 1e-3,
    max_seq_length: int = 256,
    logging_steps: int = 1,
    validation_rows: list[dict[str, Any]] | None = None,
    stage: str = "sft",
    seed: int = 7,
) -> Path:
    """Write train.jsonl (and valid.jsonl) and the job.json the worker parent would write; return job_dir."""
    job_dir.mkdir(parents=True, exist_ok=True)
    train_file = job_dir / "train.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    validation_file = None
    if validation_rows is not None:
        validation_file = job_dir / "valid.jsonl"
        validation_file.write_text("".join(json.dumps(row) + "\n" for row in validation_rows), encoding="utf-8")
    job = {
        "job_id": "ftjob-test",
        "attempt": 1,
        "spec": {
            "base_model": "tiny-llama",
            "training_file": "file-train",
            "validation_file": "file-valid" if validation_file else None,
            "stage": stage,
            "method": {
                "type": method,
                "lora": {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
            },
            "hyperparameters": {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate": learning_rate},
            "seed": seed,
        },
        "hyperparameters": {
            "n_epochs": n_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_seq_length": max_seq_length,
            "logging_steps": logging_steps,
        },
        "base_model": {
            "id": "tiny-llama",
            "path": str(base_model_path),
            "revision": None,
            "trust_remote_code": False,
            "template": "chatml",
        },
        "training_file": str(train_file),
        "validation_file": str(validation_file) if validation_file else None,
        "output_dir": str(job_dir / "output"),
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    return job_dir


@pytest.fixture(scope="session")
def write_job() -> Callable[..., Path]:
    """`write_job(job_dir, base_model_path, rows, **hyperparameters)`, see `write_job_dir`."""
    return write_job_dir


@pytest.fixture(scope="session")
def fixed_rows() -> list[dict[str, Any]]:
    return fixed_reply_rows()
