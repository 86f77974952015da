"""What one tenant sends serve cannot starve another (issue 13): a body over TUNEQUEUE_MAX_INFERENCE_BODY_BYTES is a
413 before it is parsed (also chunked, while it arrives); a prompt longer than the context could hold is a 400
before any tokeniser runs; tokenising runs off the event loop; a tenant at TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES
gets 429 with Retry-After while another is served; and the engine admits tenants in turn."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from common.serve_token import TENANT_HEADER
from common.settings import Settings
from tests.support.chunked import endless_json, post_chunked
from tests.support.http import assert_error
from tests.support.servers import uvicorn_in_thread
from tests.support.serving import SERVE_HEADERS, collect
from worker.serve import tokenise
from worker.serve.app import create_app
from worker.serve.engine import Engine, GenRequest, Sampling
from worker.serve.fairness import FairQueue, TenantSlots
from worker.serve.server import ModelServer
from worker.serve.tokenise import PROBE_CHARS_PER_TOKEN

pytestmark = pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")

LIMIT = 64 * 1024
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


def headers(tenant: str) -> dict[str, str]:
    return {**SERVE_HEADERS, TENANT_HEADER: tenant}


@pytest.fixture(scope="module")
def limited(serve_settings: Settings) -> Settings:
    return serve_settings.model_copy(update={"max_inference_body_bytes": LIMIT})


@pytest.fixture(scope="module")
def http(limited: Settings, model_server: ModelServer) -> Iterator[TestClient]:
    with TestClient(create_app(limited, model_server), headers=SERVE_HEADERS) as client:
        yield client


@pytest.fixture(scope="module")
def live_limited(limited: Settings, model_server: ModelServer) -> Iterator[str]:
    """A real uvicorn: chunked bodies."""
    with uvicorn_in_thread(create_app(limited, model_server)) as url:
        yield url


@pytest.fixture(scope="module")
def live(serve_settings: Settings, model_server: ModelServer) -> Iterator[str]:
    """A real uvicorn with the default body limit: requests that overlap."""
    with uvicorn_in_thread(create_app(serve_settings, model_server)) as url:
        yield url


def status(client: TestClient | httpx.Client, url: str = "") -> dict[str, Any]:
    return client.get(f"{url}/status", headers=SERVE_HEADERS).json()  # type: ignore[no-any-return]


def test_a_body_over_the_limit_is_413_from_its_content_length(http: TestClient) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "a" * LIMIT}]}
    err = assert_error(http.post("/v1/chat/completions", json=big), 413, "request_too_large",  # type: ignore[arg-type]
                       param="body")
    assert "TUNEQUEUE_MAX_INFERENCE_BODY_BYTES" in err["message"] and str(LIMIT) in err["message"]
    # Under the limit the body is parsed and checked as before: here, too many tokens for the tiny model.
    under = {**CHAT, "messages": [{"role": "user", "content": "a" * (LIMIT // 2)}]}
    assert_error(http.post("/v1/chat/completions", json=under), 400, "context_length_exceeded")  # type: ignore[arg-type]


def test_a_chunked_body_over_the_limit_is_413_while_it_is_still_arriving(live_limited: str) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = endless_json(b'{"model": "tiny-llama", "prompt": "')
        answer = post_chunked(live_limited, path, headers("tenant-a"), body)
        assert answer.status == 413, answer.body
        assert answer.body["error"]["code"] == "request_too_large" and answer.body["error"]["param"] == "body"
        assert not answer.finished, "the answer came only after the whole 64 MiB body was sent"
        assert answer.sent <= LIMIT + 4 * 1024 * 1024, f"serve took {answer.sent} bytes before refusing"


def test_an_over_long_prompt_is_400_naming_it_before_any_tokeniser_runs(http: TestClient,
                                                                        model_server: ModelServer) -> None:
    base = model_server.pool.get("tiny-llama")
    limit = model_server.tokeniser.char_limit(base)
    assert limit == base.context_length * 13  # the tiny tokenizer's longest vocabulary entry: 13 characters
    before = status(http)["tokenising"]
    too_long = "ab " * (limit // 3 + 1)
    chat = {**CHAT, "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": too_long}]}
    err = assert_error(http.post("/v1/chat/completions", json=chat), 400,  # type: ignore[arg-type]
                       "context_length_exceeded", param="messages")
    assert str(limit) in err["message"] and "2048 tokens" in err["message"]
    err = assert_error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": ["hi", too_long]}),  # type: ignore[arg-type]
                       400, "context_length_exceeded", param="prompt")
    after = status(http)["tokenising"]
    assert after["calls"] == before["calls"] and after["chars"] == before["chars"]
    assert after["refused"] == before["refused"] + 2
    # Under the character bound the exact check on tokens still answers, after tokenising.
    fits_chars = "ab " * (limit // 3 - 1)
    assert_error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": fits_chars}),  # type: ignore[arg-type]
                 400, "context_length_exceeded", param="prompt")
    assert status(http)["tokenising"]["calls"] == before["calls"] + 1


def test_a_prompt_far_over_the_context_is_refused_after_tokenising_a_few_pieces_not_all_of_it(
        http: TestClient, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the character bound but far over the context in tokens (the maximal prompt of an attack): refused
    once its first pieces hold more tokens than the context, with the same 400; the characters tokenised are
    counted by wrapping the real tokenizer."""
    base = model_server.pool.get("tiny-llama")
    piece = base.context_length * PROBE_CHARS_PER_TOKEN
    text = "ab " * (model_server.tokeniser.char_limit(base) // 3 - 1)  # ~2 tokens per 3 characters: ~17k tokens
    assert len(text) > 3 * piece
    tokenised: list[int] = []
    real = base.tokenizer.__class__.__call__

    def counting(self: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        tokenised.append(len(value) if isinstance(value, str) else sum(len(v) for v in value))
        return real(self, value, *args, **kwargs)

    monkeypatch.setattr(base.tokenizer.__class__, "__call__", counting)
    chat = {**CHAT, "messages": [{"role": "user", "content": text}]}
    err = assert_error(http.post("/v1/chat/completions", json=chat), 400,  # type: ignore[arg-type]
                       "context_length_exceeded", param="messages")
    assert f"{base.context_length} tokens" in err["message"]
    assert sum(tokenised) <= 2 * piece, f"tokenised {sum(tokenised)} of {len(text)} characters"
    tokenised.clear()
    assert_error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": text}),  # type: ignore[arg-type]
                 400, "context_length_exceeded", param="prompt")
    assert sum(tokenised) <= 2 * piece, f"tokenised {sum(tokenised)} of {len(text)} characters"


def test_a_long_tokenisation_does_not_hold_up_a_short_request(live: str, model_server: ModelServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    base = model_server.pool.get("tiny-llama")
    # A long tokenisation: 16 prompts at the character bound, each tokenised whole (the early refusal from a
    # prompt's first pieces is turned off here: its pieces are as long as the bound), then refused on the count.
    monkeypatch.setattr(tokenise, "PROBE_CHARS_PER_TOKEN", tokenise.chars_per_token(base.tokenizer))
    prompt = "the quick brown fox, " * (model_server.tokeniser.char_limit(base) // 21)
    answers: list[httpx.Response] = []
    long = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{live}/v1/completions", headers=headers("tenant-long"), timeout=60,
        json={"model": "tiny-llama", "prompt": [prompt] * 16, "max_tokens": 1})))
    with httpx.Client(timeout=30) as client:
        client.post(f"{live}/v1/chat/completions", json=CHAT, headers=headers("tenant-short"))  # warm
        long.start()
        deadline = time.monotonic() + 20
        while status(client, live)["tokenising"]["running"] == 0:
            assert long.is_alive() and time.monotonic() < deadline, "the long prompt was never seen tokenising"
            time.sleep(0.005)
        started = time.monotonic()
        short = client.post(f"{live}/v1/chat/completions", json=CHAT, headers=headers("tenant-short"))
        took = time.monotonic() - started
        still_tokenising = long.is_alive()
    long.join(60)
    assert short.status_code == 200, short.text
    assert still_tokenising, f"the short request ({took:.2f} s) was answered only after the long one"
    assert_error(answers[0], 400, "context_length_exceeded", param="prompt")


def test_a_tenant_at_its_cap_gets_429_with_retry_after_and_another_tenant_is_served(
        live: str, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_server, "slots", TenantSlots(2))
    hold = {**CHAT, "n": 2, "max_tokens": 1500, "stream": True,
            "messages": [{"role": "user", "content": "count"}]}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{live}/v1/chat/completions", json=hold, headers=headers("tenant-a")) as held:
            assert held.status_code == 200
            chunks = held.iter_raw()  # kept: a dropped iterator closes the stream
            next(chunks)  # the first tokens: both sequences are decoding
            refused = client.post(f"{live}/v1/chat/completions", json=CHAT, headers=headers("tenant-a"))
            err = assert_error(refused, 429, "rate_limit_exceeded")
            assert err["type"] == "rate_limit_error" and "TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES" in err["message"]
            assert int(refused.headers["Retry-After"]) >= 1
            other = client.post(f"{live}/v1/chat/completions", json=CHAT, headers=headers("tenant-b"))
            assert other.status_code == 200, other.text
            assert status(client, live)["tenant_sequences"] == {"cap": 2, "tenants": 1, "sequences": 2}
        # The stream closed: its sequences are cancelled and the tenant's slots come back.
        deadline = time.monotonic() + 10
        while status(client, live)["tenant_sequences"]["sequences"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post(f"{live}/v1/chat/completions", json=CHAT, headers=headers("tenant-a")).status_code == 200
        too_many = client.post(f"{live}/v1/chat/completions", json={**CHAT, "n": 3}, headers=headers("tenant-a"))
        assert_error(too_many, 400, "invalid_value", param="n")


def test_waiting_tenants_are_admitted_in_turn(model_server: ModelServer) -> None:
    """Tenant a fills the batch (4) and has 4 more waiting; tenant b's one request, sent after, takes the first
    free slot instead of waiting behind a's backlog."""
    base = model_server.pool.get("tiny-llama")

    async def main() -> tuple[list[GenRequest], GenRequest]:
        loop = asyncio.get_running_loop()
        engine = Engine("fair", base.model, base.tokenizer, base.engine.bank, max_batch=4, queue_size=16,
                        max_prefill_tokens=512, context_length=2048, eos_ids=set(),  # no EOS: exact lengths
                        load_adapter=lambda _: None)  # type: ignore[arg-type,return-value]
        a = [GenRequest([[5, 6, 7]], Sampling(max_tokens=40 + 5 * i, temperature=0), loop=loop, tenant="a")
             for i in range(8)]
        for request in a:
            engine.submit(request)
        engine.start()
        try:
            while not all(r.first_token_at for r in a[:4]):
                await asyncio.sleep(0.002)
            assert a[4].first_token_at is None, "a's backlog started before b was sent"
            b = GenRequest([[8, 9]], Sampling(max_tokens=2, temperature=0), loop=loop, tenant="b")
            engine.submit(b)
            await asyncio.gather(*(collect(r) for r in [*a, b]))
        finally:
            engine.stop()
        return a, b

    a, b = asyncio.run(main())
    assert b.first_token_at is not None and a[4].first_token_at is not None
    assert b.first_token_at < a[4].first_token_at


def test_fair_queue_takes_tenants_in_turn_and_a_newcomer_first() -> None:
    queue: FairQueue[GenRequest] = FairQueue()
    made = {name: GenRequest([[1]], Sampling(max_tokens=1), tenant=name[0]) for name in ["a1", "a2", "a3", "b1", "b2"]}
    for name in ["a1", "a2", "a3", "b1", "b2"]:
        queue.append(made[name])
    order = [queue.pop_head() for _ in range(3)]
    queue.append(c1 := GenRequest([[1]], Sampling(max_tokens=1), tenant="c"))
    order += [queue.pop_head() for _ in range(3)]
    assert order == [made["b1"], made["a1"], made["b2"], c1, made["a2"], made["a3"]]
    assert len(queue) == 0 and not queue
