"""The README walk-through over real HTTP against real uvicorn + Celery + Postgres + Redis, training the tiny
Llama for real; then the downloaded adapter is loaded with PEFT and checked for learning."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.servers import LiveService, wait_for

pytestmark = pytest.mark.slow


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

    seen: list[dict[str, Any]] = []
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "lora_B still at its zero init"
    # The downloaded adapter is what was learned: on a training row, the answer's loss is far below the base
    # model's (the same weights with the adapter switched off).
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    input_ids, labels = answer_labels(tokenizer, chat_rows(1)[0]["messages"])
    model.eval()
    with torch.no_grad():
        tuned_loss = float(model(input_ids=input_ids, labels=labels).loss)
        with model.disable_adapter():
            base_loss = float(model(input_ids=input_ids, labels=labels).loss)
    assert tuned_loss < base_loss - 1.0, (tuned_loss, base_loss)

    # Another tenant sees none of it.
    _, other = make_tenant()
    other_client = httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {other}"})
    assert other_client.get(f"/jobs/{job['id']}").status_code == 404
    assert other_client.get(f"/models/{done['fine_tuned_model']}/content").status_code == 404
    assert done["fine_tuned_model"] not in {m["id"] for m in other_client.get("/v1/models").json()["data"]}


def answer_labels(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The conversation's token ids, and labels that score only the assistant's answer (the prompt masked)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    input_ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    labels = input_ids.clone()
    labels[0, :prompt_len] = -100
    return input_ids, labels
