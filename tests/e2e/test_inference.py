"""Inference end to end, with the official `openai` package as the client: the API (auth, tenancy, validation)
forwarding to the real `serve` process, an adapter trained by the real worker, another published the way the
worker publishes, both answering at once."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from common.artifacts import ArtifactStore
from tests.support.adapters import train_phrase_adapter
from tests.support.factories import chat_rows, jsonl, make_job_row, make_tenant, spec
from tests.support.s3_server import assert_stored_where_the_stack_stores
from tests.support.servers import LiveService, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")]

PHRASE = "Tangerine lighthouse at dawn."
QUESTION = chat_rows(1, answer=PHRASE)[0]["messages"][:2]  # the system and user turns it was trained on
OTHER_PHRASE = "Blue marble rolling home."
OTHER_QUESTION = [{"role": "user", "content": "Where does the marble roll?"}]


def publish_like_the_worker(tenant_id: str, adapter_dir: Path, store: ArtifactStore | None = None) -> str:
    """A finished job's adapter through worker.publish (files + manifest, models row, Redis message)."""
    from common.artifacts import get_store
    from common.db import session_scope
    from common.model_events import announce
    from common.models import Job
    from worker.publish import record_model, upload_adapter

    job_id = make_job_row(tenant_id, status="running")
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        key, manifest = upload_adapter(store or get_store(), job, 0, adapter_dir)
        row = record_model(session, job, 0, key, manifest)
        assert row is not None
        model_id = row.id
    announce("published", model_id=model_id, tenant_id=tenant_id, base_model="tiny-llama", storage_key=key)
    return model_id


def ask(client: openai.OpenAI, model: str, messages: list[dict[str, str]], **kw: Any) -> str:
    params: dict[str, Any] = {"temperature": 0, "max_tokens": 24, **kw}
    reply = client.chat.completions.create(model=model, messages=messages, **params)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def serve_adapters(service: LiveService) -> list[str]:
    bases = httpx.get(f"{service.serve_url}/status", headers=service.serve_headers(), timeout=5).json()["bases"]
    return [a for base in bases.values() for a in base["adapters"]]


def test_trained_adapters_answer_through_the_openai_sdk(stack: LiveService, tiny_model: Path,
                                                         tmp_path: Path) -> None:
    tenant_id, key = make_tenant()
    http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    upload = http.post("/files", files={"file": ("train.jsonl", io.BytesIO(jsonl(chat_rows(16, answer=PHRASE))))},
                       data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    job = http.post("/jobs", json=spec(upload.json()["id"])).json()
    assert job["status"] in {"validating_files", "queued"}, job

    # While the worker trains, a second adapter (trained here in-process) is published as the worker would.
    other = publish_like_the_worker(
        tenant_id, train_phrase_adapter(tiny_model, tmp_path / "other", OTHER_QUESTION, OTHER_PHRASE), stack.store)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)

    done = wait_for(http, job["id"], {"succeeded", "failed", "cancelled"}, stack)
    succeeded_at = time.monotonic()
    assert done["status"] == "succeeded", f"{done}\n{stack.logs()}"
    tuned = done["fine_tuned_model"]
    assert http.get(f"/files/{upload.json()['id']}/content").content == jsonl(chat_rows(16, answer=PHRASE))
    stream = client.chat.completions.create(model=tuned, messages=QUESTION, temperature=0, stream=True)  # type: ignore[arg-type]
    chunks: list[Any] = []
    for chunk in stream:
        if not chunks:
            print(f"\njob succeeded → first token from its adapter: {time.monotonic() - succeeded_at:.2f}s")
        chunks.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PHRASE, stack.logs()
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"

    listed = {m.id: m for m in client.models.list()}
    assert listed[tuned].parent == "tiny-llama" and listed[other].parent == "tiny-llama"  # type: ignore[attr-defined]
    assert "tiny-llama" in listed
    vllm = client.models.retrieve(tuned).model_dump()["vllm"]
    assert vllm == {"compatible": True, "lora_rank": 8, "max_lora_rank": 16, "modules_to_save": None, "problems": []}

    # The adapter is really applied: it answers its phrase greedily, the base model does not.
    assert ask(client, tuned, QUESTION) == PHRASE
    assert PHRASE not in ask(client, "tiny-llama", QUESTION)
    text = client.completions.create(model=tuned, prompt="The worker", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason in {"stop", "length"} and text.usage and text.usage.prompt_tokens > 0

    # A checkpoint of the job answers too, with the adapter saved at its step, for its owner only. The newest one
    # was saved at the last step: it holds the final weights, so it answers the trained phrase like the model.
    checkpoints = http.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints, "the job saved no checkpoint"
    assert stack.store is not None
    assert_stored_where_the_stack_stores(stack.store, tenant_id, job["id"])
    assert checkpoints[0]["step_number"] == done["progress"]["total_steps"], checkpoints
    assert ask(client, checkpoints[0]["id"], QUESTION) == PHRASE
    # … and by its OpenAI name, `fine_tuned_model_checkpoint`; a name whose step, base or suffix is not the job's
    # names nothing.
    name = checkpoints[0]["fine_tuned_model_checkpoint"]
    assert name == f"{tuned}:ckpt-step-{checkpoints[0]['step_number']}"
    assert ask(client, name, QUESTION) == PHRASE
    for wrong in (f"{tuned}:ckpt-step-{checkpoints[0]['step_number'] + 1000}",
                  name.replace("ft:tiny-llama:", "ft:other-base:", 1)):
        with pytest.raises(openai.NotFoundError):
            ask(client, wrong, QUESTION)

    # Two adapters asked at the same moment, several times over: each answers as itself.
    answers: dict[str, list[str]] = {tuned: [], other: []}

    def worker(model: str, question: list[dict[str, str]]) -> None:
        for _ in range(3):
            answers[model].append(ask(client, model, question))

    threads = [threading.Thread(target=worker, args=(tuned, QUESTION)),
               threading.Thread(target=worker, args=(other, OTHER_QUESTION))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {tuned: [PHRASE] * 3, other: [OTHER_PHRASE] * 3}

    # Bad parameters: 422 for types and ranges, 400 for what the server does not offer.
    bad: dict[str, Any]
    for bad in ({"temperature": 5}, {"n": 0}, {"stop": list("abcde")}, {"max_tokens": -1}):
        with pytest.raises(openai.UnprocessableEntityError):
            ask(client, tuned, QUESTION, **bad)
    for bad in ({"logprobs": True}, {"max_tokens": 100_000}, {"presence_penalty": 0.5},
                {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}):
        with pytest.raises(openai.BadRequestError):
            ask(client, tuned, QUESTION, **bad)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=tuned, messages=[])
    with pytest.raises(openai.NotFoundError):
        ask(client, "ft:tiny-llama:nope:ftjob-nope", QUESTION)

    # Another tenant: neither the adapter nor its existence.
    _, stranger_key = make_tenant()
    stranger = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stranger_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        ask(stranger, tuned, QUESTION)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        stranger.models.delete(tuned)
    with pytest.raises(openai.NotFoundError):
        ask(stranger, checkpoints[0]["id"], QUESTION)
    with pytest.raises(openai.NotFoundError):
        ask(stranger, name, QUESTION)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0).models.list()

    # A client that hangs up mid-stream frees its place in the batch.
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "tiny-llama", "messages": QUESTION, "stream": True, "max_tokens": 1900, "n": 8},
                      timeout=30) as hung:
        assert hung.status_code == 200
        next(hung.iter_bytes())
    deadline = time.monotonic() + 3  # 8 × 1900 tokens would take far longer
    while time.monotonic() < deadline:
        running = httpx.get(f"{stack.serve_url}/status",
                            headers=stack.serve_headers()).json()["bases"]["tiny-llama"]["running"]
        if running == 0:
            break
        time.sleep(0.1)
    assert running == 0

    # Delete: gone from the list, refused, and unloaded by serve.
    assert other in serve_adapters(stack)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tiny-llama")
    deleted = client.models.delete(other)
    assert deleted.deleted and deleted.id == other
    assert other not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        ask(client, other, OTHER_QUESTION)
    with pytest.raises(openai.NotFoundError):
        client.models.delete(other)
    deadline = time.monotonic() + 5
    while other in serve_adapters(stack) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other not in serve_adapters(stack)
    assert ask(client, tuned, QUESTION) == PHRASE
