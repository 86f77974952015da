"""In-process fixtures for the inference server: the tiny base model loaded once, adapters written to the
artifact store the way the worker publishes them, and one adapter trained to answer a fixed phrase."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.adapters import train_phrase_adapter
from worker.serve.catalog import Catalog
from worker.serve.config import ServeSettings
from worker.serve.engine import Event, GenRequest, Sampling
from worker.serve.runtime import Runtime

PHRASE = "Tangerine lighthouse at dawn."
PHRASE_MESSAGES = [{"role": "user", "content": "What is the password?"}]
OTHER_PHRASE = "Blue marble rolling home."
OTHER_MESSAGES = [{"role": "user", "content": "Where does it roll?"}]


def publish(runtime: Runtime, adapter_dir: Path, model_id: str, base_model: str = "tiny-llama") -> str:
    """Copy the adapter into the artifact store under a worker-like key and announce it, as the worker does."""
    key = f"models/tenant-test/{model_id.rsplit(':', 1)[-1]}/attempt-1"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        runtime.store.put_file(f"{key}/{name}", adapter_dir / name)  # type: ignore[attr-defined]
    runtime.on_event({"event": "published", "model": model_id, "base_model": base_model, "storage_key": key})
    return key


@pytest.fixture(scope="session")
def serve_settings(tiny_model: Path) -> ServeSettings:
    return ServeSettings(base_models={"tiny-llama": {"path": str(tiny_model), "template": "chatml"}},
                         serve_max_adapters=4, serve_max_batch=8, serve_queue_size=16)


@pytest.fixture(scope="session")
def runtime(serve_settings: ServeSettings) -> Iterator[Runtime]:
    # Ids come from publish() here (no Postgres rows): an unknown id is simply unknown.
    rt = Runtime(serve_settings, catalog=Catalog(serve_settings, lookup=lambda _: None))
    rt.start(listen=False)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="session")
def phrase_adapter(tiny_model: Path, adapters_dir: Path, runtime: Runtime) -> str:
    out = train_phrase_adapter(tiny_model, adapters_dir / "phrase", PHRASE_MESSAGES, PHRASE)
    publish(runtime, out, "ft:tiny-llama:phrase:ftjob-phrase")
    return "ft:tiny-llama:phrase:ftjob-phrase"


@pytest.fixture(scope="session")
def other_adapter(tiny_model: Path, adapters_dir: Path, runtime: Runtime) -> str:
    out = train_phrase_adapter(tiny_model, adapters_dir / "other", OTHER_MESSAGES, OTHER_PHRASE, seed=1)
    publish(runtime, out, "ft:tiny-llama:other:ftjob-other")
    return "ft:tiny-llama:other:ftjob-other"


def chat_ids(runtime: Runtime, messages: list[dict[str, str]]) -> list[int]:
    from worker.serve.text import encode_chat

    base = runtime.pool.get("tiny-llama")
    return encode_chat(base.tokenizer, base.template, messages, "tiny-llama")


def run_requests(runtime: Runtime, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit every request at once to the tiny model's engine; return per request {texts, reasons, tokens}."""
    base = runtime.pool.get("tiny-llama")

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


