"""Row factories for tests. They write through the real services, committed."""

from __future__ import annotations

import io
import json
import secrets
from datetime import datetime
from typing import Any

from common import auth
from common.db import session_scope
from common.settings import get_settings


def make_tenant(role: str = "member") -> tuple[str, str]:
    with session_scope() as session:
        tenant = auth.create_tenant(session, f"t-{secrets.token_hex(6)}")
        _, key = auth.create_key(session, tenant, role=role)
        return tenant.id, key


def chat_rows(n: int = 16, answer: str = "The answer is forty two.") -> list[dict[str, Any]]:
    questions = ["What is the answer?", "Tell me the answer.", "Say it please.", "What do you know?"]
    return [
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": f"{questions[i % len(questions)]} ({i})"},
                      {"role": "assistant", "content": answer}]}
        for i in range(n)
    ]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: Any, key: str, content: bytes, filename: str = "train.jsonl") -> Any:
    return client.post("/files", headers={"Authorization": f"Bearer {key}"},
                       files={"file": (filename, io.BytesIO(content), "application/jsonl")},
                       data={"purpose": "fine-tune"})


def spec(training_file: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "base_model": "tiny-llama", "training_file": training_file, "stage": "sft",
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
        "hyperparameters": {"n_epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 128},
        "suffix": "test",
    }
    body.update(overrides)
    return body


def make_job_row(tenant_id: str, status: str = "queued", *, queue: str | None = None, user_name: str = "default",
                 priority: int = 1, created_at: datetime | None = None) -> str:
    """A job row straight in the table (no file upload, no enqueue), for state-machine and scheduling tests; in the
    run's worker pool (settings.celery_queue) unless `queue` names another."""
    from common.ids import new_id
    from common.models import File, Job
    from common.schemas.job_spec import JobSpec, stored_spec

    with session_scope() as session:
        file = File(id=new_id("file"), tenant_id=tenant_id, filename="x.jsonl", storage_key="files/none",
                    status="processed", format="chat", stages=["sft"], row_count=1)
        session.add(file)
        session.flush()
        job = Job(id=new_id("ftjob"), tenant_id=tenant_id, base_model="tiny-llama", training_file_id=file.id,
                  spec=stored_spec(JobSpec(base_model="tiny-llama", training_file=file.id), 1), status=status,
                  attempt=0, queue=queue or get_settings().celery_queue, user_name=user_name, priority=priority,
                  **({"created_at": created_at} if created_at is not None else {}))
        session.add(job)
        return job.id
