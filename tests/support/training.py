"""The training child's tests: rows for each stage, the job directory the worker parent writes, and running the
child as a process and reading its event lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.schemas.job_spec import ADAPTER_METHODS, JobSpec, stored_spec, training_spec
from tests.support.servers import REPO
from worker.train.protocol import EVENT_PREFIX

if TYPE_CHECKING:
    from worker.train.run import TrainResult

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
    resolves and stores it, patched with `resolved` (an OOM retry's override), as worker/prepare.py does."""
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
        "spec": training_spec(stored_spec(spec, len(rows)), resolved).model_dump(mode="json"),
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


def events_of(stdout: str) -> list[dict[str, Any]]:
    """The child's events in `stdout` (every line with the protocol's prefix)."""
    return [json.loads(line[len(EVENT_PREFIX):]) for line in stdout.splitlines() if line.startswith(EVENT_PREFIX)]


def start_child(job_dir: Path) -> subprocess.Popen[str]:
    """`python -m worker.train <job_dir>` with its stdout piped, one CPU thread (see tests/worker/conftest.py)."""
    return subprocess.Popen(
        [sys.executable, "-m", "worker.train", str(job_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def loss_drop(result: TrainResult) -> float:
    """How far a run's loss fell from its first logged step to its last."""
    assert result.first_loss is not None and result.last_loss is not None, "the run logged no loss"
    return result.first_loss - result.last_loss
