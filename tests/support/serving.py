"""The inference server's tests in-process: the phrases the test adapters are taught, publishing an adapter the way
the worker does, and running requests straight on the tiny model's engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from common.serve_token import TENANT_HEADER
from worker.serve.engine import Event, GenRequest, Sampling
from worker.serve.server import ModelServer

PHRASE = "Tangerine lighthouse at dawn."
PHRASE_MESSAGES = [{"role": "user", "content": "What is the password?"}]
OTHER_PHRASE = "Blue marble rolling home."
OTHER_MESSAGES = [{"role": "user", "content": "Where does it roll?"}]
# What the API sends serve (common/serve_token.py): the in-process servers are given this token, and the test
# adapters belong to this tenant.
SERVE_TOKEN = "serve-token-for-tests-0123456789abcdef"
TENANT = "tenant-test"
SERVE_HEADERS = {"Authorization": f"Bearer {SERVE_TOKEN}", TENANT_HEADER: TENANT}


def publish(model_server: ModelServer, adapter_dir: Path, model_id: str, base_model: str = "tiny-llama",
            tenant_id: str = TENANT) -> str:
    """Copy the adapter into the artifact store under a worker-like key and announce it, as the worker does."""
    key = f"models/{tenant_id}/{model_id.rsplit(':', 1)[-1]}/attempt-1"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        model_server.store.put_file(f"{key}/{name}", adapter_dir / name)  # type: ignore[attr-defined]
    model_server.on_event({"event": "published", "model": model_id, "base_model": base_model, "storage_key": key,
                           "tenant_id": tenant_id})
    return key


def chat_ids(model_server: ModelServer, messages: list[dict[str, str]]) -> list[int]:
    from worker.serve.text import encode_chat

    base = model_server.pool.get("tiny-llama")
    return encode_chat(base.tokenizer, base.template, messages, "tiny-llama")


def run_requests(model_server: ModelServer, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit every request at once to the tiny model's engine; return per request {texts, reasons, tokens}."""
    base = model_server.pool.get("tiny-llama")

    async def main() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        jobs = []
        for spec in specs:
            job = GenRequest(spec["prompts"], spec.get("sampling") or Sampling(max_tokens=12, temperature=0),
                             n=spec.get("n", 1), adapter_id=spec.get("adapter"), loop=loop)
            base.engine.submit(job)
            jobs.append(job)
        return list(await asyncio.gather(*(collect(job) for job in jobs)))

    return asyncio.run(main())


async def collect(job: GenRequest) -> dict[str, Any]:
    texts, reasons, tokens = [""] * job.rows, [None] * job.rows, [0] * job.rows
    while any(r is None for r in reasons):
        events: list[Event] = await asyncio.wait_for(job.queue.get(), timeout=60)
        for event in events:
            if event.error is not None:
                return {"error": event.error}
            texts[event.choice] += event.text
            tokens[event.choice] = event.completion_tokens
            if event.finish_reason:
                reasons[event.choice] = event.finish_reason  # type: ignore[call-overload]
    return {"texts": texts, "reasons": reasons, "tokens": tokens}
