"""SFT learns a rule, proven on held-out prompts through the real stack: SmolLM2-135M-Instruct answers none of
the held-out orders in the order-line shape (tests/support/quality.py); after a LoRA job submitted over the API,
trained by the Celery worker's training child and served by `worker.serve`, it answers nearly all of them —
orders for items that no training row names. Both are read through `/v1/chat/completions` at temperature 0."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.settings import REAL_MODEL_ID
from tests.support.factories import jsonl, make_tenant
from tests.support.quality import HELD_OUT_SEED, SEEDS, exact_match, sft_rows
from tests.support.servers import LiveService, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.quality]

HELD_OUT = sft_rows(16, held_out=True, seed=HELD_OUT_SEED)
MAX_TOKENS = 16  # the longest right answer is 12 tokens; the base model's prose is cut there


def answers(client: httpx.Client, model: str, rows: list[dict[str, Any]]) -> list[str]:
    replies = []
    for row in rows:
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": row["messages"][:-1], "temperature": 0, "max_tokens": MAX_TOKENS})
        assert response.status_code == 200, response.text
        replies.append(response.json()["choices"][0]["message"]["content"] or "")
    return replies


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lora_job_takes_held_out_exact_match_from_none_to_nearly_all(
        quality_service: LiveService, real_model: Path, seed: int) -> None:
    _, key = make_tenant()
    client = httpx.Client(base_url=quality_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    started = time.monotonic()
    base = answers(client, REAL_MODEL_ID, HELD_OUT)
    base_accuracy = exact_match(base, HELD_OUT)

    rows = sft_rows(32, seed=seed)
    assert not {r["messages"][1]["content"] for r in rows} & {r["messages"][1]["content"] for r in HELD_OUT}
    upload = client.post("/files", files={"file": ("orders.jsonl", io.BytesIO(jsonl(rows)))},
                         data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    job = client.post("/jobs", json={
        "base_model": REAL_MODEL_ID, "training_file": upload.json()["id"], "stage": "sft", "seed": seed,
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 32, "dropout": 0.0}},
        "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "max_seq_length": 64},
    })
    assert job.status_code == 200, job.text
    trained_at = time.monotonic()
    done = wait_for(client, job.json()["id"], {"succeeded", "failed", "cancelled"}, quality_service, timeout=900)
    assert done["status"] == "succeeded", f"{done}\n{quality_service.logs()}"
    job_seconds = time.monotonic() - trained_at

    tuned = answers(client, done["fine_tuned_model"], HELD_OUT)
    tuned_accuracy = exact_match(tuned, HELD_OUT)
    print(f"\nsft seed {seed}: held-out exact match {base_accuracy:.2f} -> {tuned_accuracy:.2f}; job "
          f"{job_seconds:.0f}s, test {time.monotonic() - started:.0f}s; base said {base[0]!r}, tuned {tuned[0]!r}")
    assert base_accuracy <= 0.1, base
    assert tuned_accuracy >= 0.8, list(zip(tuned, [r["messages"][-1]["content"] for r in HELD_OUT], strict=True))
