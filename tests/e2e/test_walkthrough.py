"""The README walk-through over real HTTP against real uvicorn + Celery + Postgres + Redis, training the tiny
Llama for real; then the downloaded adapter is loaded with PEFT and checked for learning."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.e2e.conftest import LiveService
from tests.factories import chat_rows, jsonl, make_tenant, spec

pytestmark = pytest.mark.slow


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], service: LiveService, timeout: float = 300,
             seen: list[dict] | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {statuses}; last: {job}\n{service.logs()}")


def test_walkthrough(live_service: LiveService, tiny_model: Path, tmp_path: Path) -> None:
    _, key = make_tenant()
    client = httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    upload = client.post("/files", files={"file": ("train.jsonl", io.BytesIO(jsonl(chat_rows(16))))},
                         data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    file = upload.json()
    assert file["status"] == "processed"

    job = client.post("/jobs", json=spec(file["id"])).json()
    assert job["status"] == "validating_files", job  # then queued once its files pass the tokenizer

    seen: list[dict] = []
    running = wait_for(client, job["id"], {"running", "succeeded", "failed"}, live_service, seen=seen)
    assert running["status"] != "failed", running
    done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, live_service, seen=seen)
    assert done["status"] == "succeeded", f"{done}\n{live_service.logs()}"
    assert done["fine_tuned_model"] == f"ft:tiny-llama:test:{job['id']}"
    statuses = [s["status"] for s in seen]
    assert "running" in statuses, statuses
    live = [s["progress"] for s in seen if s["status"] == "running" and s.get("progress")]
    assert live, "no progress seen while running"
    assert {"step", "total_steps", "loss"} <= set(live[-1])
    final = done["progress"]
    assert final["step"] == final["total_steps"] == 16  # 16 rows / batch 4 × 4 epochs

    events = client.get(f"/jobs/{job['id']}/events?limit=100").json()["data"]
    losses = [e["data"]["loss"] for e in reversed(events) if e["type"] == "metrics" and e["data"].get("loss")]
    # A random tiny model starts near ln(vocab) ≈ 6.9; an untrained run stays there. LoRA must cut it clearly.
    third = len(losses) // 3
    assert len(losses) >= 12 and losses[-1] < losses[0] - 0.8, f"{losses}"
    assert sum(losses[-third:]) / third < 0.9 * sum(losses[:third]) / third, f"{losses}"

    models = client.get("/v1/models").json()["data"]
    adapter = next(m for m in models if m["id"] == done["fine_tuned_model"])
    assert adapter["parent"] == "tiny-llama"
    assert any(m["id"] == "tiny-llama" and m["kind"] == "base" for m in models)

    content = client.get(f"/models/{done['fine_tuned_model']}/content")
    assert content.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(content.content)) as tar:
        names = set(tar.getnames())
        assert names == {"adapter_config.json", "adapter_model.safetensors", "manifest.json"}
        tar.extractall(tmp_path / "adapter", filter="data")
    manifest = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    import hashlib

    for entry in manifest["files"]:
        assert hashlib.sha256((tmp_path / "adapter" / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "lora_B still at its zero init"

    # Another tenant sees none of it.
    _, other = make_tenant()
    other_client = httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {other}"})
    assert other_client.get(f"/jobs/{job['id']}").status_code == 404
    assert other_client.get(f"/models/{done['fine_tuned_model']}/content").status_code == 404
    assert done["fine_tuned_model"] not in {m["id"] for m in other_client.get("/v1/models").json()["data"]}
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == base.config.vocab_size
