"""Fixtures for worker tests: the tiny base model (built once per session) and job directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.schemas.job_spec import ADAPTER_METHODS, JobSpec, resolved_hyperparameters
from worker.tiny_model import build_tiny_model

FIXED_REPLY = "All systems nominal."
BAD_REPLY = "Everything is on fire, sorry!"


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


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_job_dir(
    job_dir: Path,
    base_model_path: Path | str,
    rows: list[dict[str, Any]],
    *,
    stage: str = "sft",
    method: str = "lora",
    lora: dict[str, Any] | None = None,
    freeze: dict[str, Any] | None = None,
    validation_rows: list[dict[str, Any]] | None = None,
    seed: int = 7,
    spec_extra: dict[str, Any] | None = None,
    job_extra: dict[str, Any] | None = None,
    resolved: dict[str, Any] | None = None,
    **hyperparameters: Any,
) -> Path:
    """Write train.jsonl (and valid.jsonl) and the job.json the worker parent writes: the spec as the API
    stores it and `resolved_hyperparameters` of it, patched with `resolved` (an OOM retry's override)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    train_file = write_jsonl(job_dir / "train.jsonl", rows)
    validation_file = write_jsonl(job_dir / "valid.jsonl", validation_rows) if validation_rows else None
    hp = {"n_epochs": 5, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 256, "save_steps": None,
          **hyperparameters}
    method_body: dict[str, Any] = {"type": method}
    if method in ADAPTER_METHODS:
        method_body["lora"] = {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear", **(lora or {})}
    if method == "freeze":
        method_body["freeze"] = {"trainable_layers": 1, **(freeze or {})}
    spec = JobSpec.model_validate({
        "base_model": "tiny-llama", "training_file": "file-train",
        "validation_file": "file-valid" if validation_file else None, "stage": stage, "method": method_body,
        "hyperparameters": hp, "seed": seed, **(spec_extra or {}),
    })
    job = {
        "job_id": "ftjob-test",
        "attempt": 1,
        "spec": spec.model_dump(mode="json"),
        "hyperparameters": {**resolved_hyperparameters(spec, len(rows)), **(resolved or {})},
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
        **(job_extra or {}),
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    return job_dir


@pytest.fixture(scope="session")
def write_job() -> Callable[..., Path]:
    """`write_job(job_dir, base_model_path, rows, **options)`, see `write_job_dir`."""
    return write_job_dir


@pytest.fixture(scope="session")
def fixed_rows() -> list[dict[str, Any]]:
    return fixed_reply_rows()


def pair_rows(n: int = 16) -> list[dict[str, Any]]:
    """Preference pairs: the same good answer is always chosen over the same bad one."""
    return [
        {
            "prompt": [{"role": "system", "content": "You are a terse status bot."},
                       {"role": "user", "content": f"Status check number {i}, how is everything?"}],
            "chosen": [{"role": "assistant", "content": FIXED_REPLY}],
            "rejected": [{"role": "assistant", "content": BAD_REPLY}],
        }
        for i in range(n)
    ]


def kto_rows(n: int = 16) -> list[dict[str, Any]]:
    """Unpaired feedback: even rows carry the good answer (desirable), odd rows the bad one."""
    return [
        {"prompt": pair["prompt"], "completion": pair["chosen"] if i % 2 == 0 else pair["rejected"],
         "label": i % 2 == 0}
        for i, pair in enumerate(pair_rows(n))
    ]


def text_rows(n: int = 16) -> list[dict[str, Any]]:
    """Plain text of varied length for pt."""
    return [{"text": " ".join(["The worker trains the data today."] * (1 + i % 4))} for i in range(n)]


ROWS_BY_STAGE = {"sft": fixed_reply_rows, "pt": text_rows, "dpo": pair_rows, "orpo": pair_rows, "rm": pair_rows,
                 "kto": kto_rows}
