"""The batched engine on the tiny model, in-process: batching changes nothing about what each request gets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from common.errors import NotFound
from tests.support.adapters import random_adapter
from tests.support.serving import (
    OTHER_MESSAGES,
    OTHER_PHRASE,
    PHRASE,
    PHRASE_MESSAGES,
    chat_ids,
    collect,
    publish,
    run_requests,
)
from worker.serve.engine import Engine, GenRequest, QueueFull, Sampling
from worker.serve.server import ModelServer

pytestmark = pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")

GREEDY = Sampling(max_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def random_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory,
                    model_server: ModelServer) -> list[str]:
    root = tmp_path_factory.mktemp("random-adapters")
    names = []
    configs: list[dict[str, Any]] = [{}, {"use_dora": True, "r": 4, "target_modules": ["q_proj", "v_proj"]}, {"r": 2}]
    for i, cfg in enumerate(configs):
        name = f"ft:tiny-llama:rand{i}:ftjob-rand{i}"
        publish(model_server, random_adapter(tiny_model, root / f"r{i}", seed=10 + i, **cfg), name)
        names.append(name)
    return names


def test_phrase_adapter_answers_its_phrase_and_the_base_does_not(model_server: ModelServer,
                                                                  phrase_adapter: str) -> None:
    prompt = chat_ids(model_server, PHRASE_MESSAGES)
    tuned, base = run_requests(model_server, [
        {"prompts": [prompt], "adapter": phrase_adapter, "sampling": Sampling(max_tokens=24, temperature=0)},
        {"prompts": [prompt], "sampling": Sampling(max_tokens=24, temperature=0)}])
    assert tuned["texts"] == [PHRASE] and tuned["reasons"] == ["stop"], tuned
    assert PHRASE not in base["texts"][0], base


def test_engine_matches_peft_generate(tiny_model: Path, model_server: ModelServer, random_adapters: list[str],
                                      tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt = chat_ids(model_server, [{"role": "user", "content": "Tell me about the queue."}])
    (ours,) = run_requests(model_server, [{"prompts": [prompt], "adapter": random_adapters[1],
                                           "sampling": Sampling(max_tokens=10, temperature=0)}])
    key = model_server.catalog.resolve(random_adapters[1]).storage_key
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        model_server.store.fetch(f"{key}/{name}", tmp_path / name)  # type: ignore[attr-defined]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path).eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
    tokenizer = model_server.pool.get("tiny-llama").tokenizer
    assert ours["texts"][0] == tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def _scenario(model_server: ModelServer, adapters: list[str | None]) -> list[dict[str, Any]]:
    """Every request alone, then all together — the first ones running already when the others join."""
    prompts = [chat_ids(model_server, [{"role": "user", "content": "hi " * (1 + 3 * i)}])
               for i in range(len(adapters))]
    specs: list[dict[str, Any]] = [
        {"prompts": [p], "adapter": a, "sampling": Sampling(max_tokens=8 + 3 * i, temperature=0)}
        for i, (p, a) in enumerate(zip(prompts, adapters, strict=True))]
    alone = [run_requests(model_server, [spec])[0] for spec in specs]
    base = model_server.pool.get("tiny-llama")

    async def together() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        jobs = [GenRequest(s["prompts"], s["sampling"], adapter_id=s["adapter"], loop=loop) for s in specs]
        tasks = []
        for i, job in enumerate(jobs):
            base.engine.submit(job)
            tasks.append(asyncio.create_task(collect(job)))
            if i == 1:  # let the first two run a few steps before the rest join
                while base.engine.generated_tokens < start + 4:
                    await asyncio.sleep(0.001)
        return list(await asyncio.gather(*tasks))

    start = base.engine.generated_tokens
    joined = asyncio.run(together())
    assert joined == alone
    return alone


def test_mixed_adapters_in_one_batch_answer_as_if_alone(model_server: ModelServer, random_adapters: list[str],
                                                        phrase_adapter: str) -> None:
    outputs = _scenario(model_server, [random_adapters[0], None, random_adapters[1], phrase_adapter, random_adapters[2],
                                       random_adapters[0]])
    assert len({tuple(o["texts"]) for o in outputs[:3]}) == 3, outputs  # the adapters really differ


def test_two_phrase_adapters_together(model_server: ModelServer, phrase_adapter: str, other_adapter: str) -> None:
    greedy = Sampling(max_tokens=24, temperature=0)
    one, two = run_requests(model_server, [
        {"prompts": [chat_ids(model_server, PHRASE_MESSAGES)], "adapter": phrase_adapter, "sampling": greedy},
        {"prompts": [chat_ids(model_server, OTHER_MESSAGES)], "adapter": other_adapter, "sampling": greedy}])
    assert one["texts"] == [PHRASE] and two["texts"] == [OTHER_PHRASE]


def test_stop_sequences_max_tokens_and_usage(model_server: ModelServer, phrase_adapter: str) -> None:
    prompt = chat_ids(model_server, PHRASE_MESSAGES)
    stopped, short = run_requests(model_server, [
        {"prompts": [prompt], "adapter": phrase_adapter,
         "sampling": Sampling(max_tokens=24, temperature=0, stop=("house", "zzz"))},
        {"prompts": [prompt], "adapter": phrase_adapter, "sampling": Sampling(max_tokens=3, temperature=0)}])
    assert stopped["texts"] == [PHRASE[:PHRASE.index("house")]] and stopped["reasons"] == ["stop"]
    assert short["reasons"] == ["length"] and short["tokens"] == [3] and PHRASE.startswith(short["texts"][0])


def test_seeded_sampling_repeats_and_choices_differ(model_server: ModelServer) -> None:
    prompt = chat_ids(model_server, [{"role": "user", "content": "Say something."}])
    sampling = Sampling(max_tokens=10, temperature=1.0, top_p=0.9, seed=1234)
    first, second = run_requests(model_server, [{"prompts": [prompt], "n": 3, "sampling": sampling}] * 2)
    assert first["texts"] == second["texts"]
    assert len(set(first["texts"])) > 1, first


def test_queue_full_refuses(model_server: ModelServer) -> None:
    base = model_server.pool.get("tiny-llama")
    idle = Engine("idle", base.model, base.tokenizer, base.engine.bank, max_batch=4, queue_size=1,
                  max_prefill_tokens=512, context_length=2048, eos_ids=set(), load_adapter=lambda _: None)  # type: ignore
    idle.submit(GenRequest([[1, 2]], GREEDY))  # never started: it stays queued
    with pytest.raises(QueueFull):
        idle.submit(GenRequest([[1, 2]], GREEDY))
    with pytest.raises(QueueFull, match="at most 4"):
        Engine("small", base.model, base.tokenizer, base.engine.bank, max_batch=4, queue_size=8,
               max_prefill_tokens=512, context_length=2048, eos_ids=set(),
               load_adapter=lambda _: None).submit(GenRequest([[1]], GREEDY, n=5))  # type: ignore


def test_cancel_frees_the_batch_and_delete_refuses(model_server: ModelServer, random_adapters: list[str]) -> None:
    base = model_server.pool.get("tiny-llama")

    async def cancel_midway() -> None:
        job = GenRequest([[5, 6, 7]], Sampling(max_tokens=1000, temperature=0), loop=asyncio.get_running_loop())
        base.engine.submit(job)
        await job.queue.get()
        job.cancel()

    asyncio.run(cancel_midway())
    deadline = time.monotonic() + 5
    while base.engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not base.engine.running

    victim = random_adapters[2]
    run_requests(model_server, [{"prompts": [[5, 6]], "adapter": victim}])
    assert victim in base.engine.bank
    model_server.on_event({"event": "deleted", "model": victim})
    deadline = time.monotonic() + 5
    while victim in base.engine.bank and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim not in base.engine.bank
    with pytest.raises(NotFound):
        model_server.catalog.resolve(victim)
    (refused,) = run_requests(model_server, [{"prompts": [[5, 6]], "adapter": victim}])
    assert isinstance(refused["error"], NotFound)
