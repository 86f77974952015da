"""One tenant's inference cannot starve another's, end to end (issue 13): the real API in front of the real serve
process, with a 64 KiB body limit and a cap of 2 sequences per tenant. A body over the limit is a 413 at the API
and at serve (declared, or counted while a chunked body arrives); a prompt too long for the context is a 400
naming it and serve never tokenises it; a tenant at its cap gets 429 with Retry-After through the API while
another tenant is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.chunked import endless_json, post_chunked
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth
from tests.support.servers import LiveService, live_stack

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")]

LIMIT = 64 * 1024
CAP = 2
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
PATHS = ("/v1/chat/completions", "/v1/completions")


@pytest.fixture(scope="module")
def service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    env = {"TUNEQUEUE_MAX_INFERENCE_BODY_BYTES": str(LIMIT), "TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES": str(CAP)}
    with live_stack("isolation", tmp_path_factory.mktemp("isolation-logs"), env) as live:
        yield live


def serve_status(service: LiveService) -> dict[str, Any]:
    return httpx.get(f"{service.serve_url}/status", headers=service.serve_headers(), timeout=10).json()  # type: ignore[no-any-return]


def test_an_inference_body_over_the_limit_is_413_at_the_api_and_at_serve(service: LiveService) -> None:
    _, key = make_tenant()
    big = {**CHAT, "messages": [{"role": "user", "content": "a" * LIMIT}]}
    doors = [(service.url, auth(key)), (service.serve_url, service.serve_headers("tenant-anyone"))]
    for url, headers in doors:
        for path in PATHS:
            err = assert_error(httpx.post(f"{url}{path}", json=big, headers=headers, timeout=30), 413,
                               "request_too_large", param="body")
            assert "TUNEQUEUE_MAX_INFERENCE_BODY_BYTES" in err["message"]
            answer = post_chunked(url, path, headers, endless_json(b'{"model": "tiny-llama", "prompt": "'))
            assert answer.status == 413 and answer.body["error"]["code"] == "request_too_large", answer.body
            assert not answer.finished, f"{url}{path} answered only after the whole 64 MiB body was sent"
            assert answer.sent <= LIMIT + 4 * 1024 * 1024, f"{url}{path} took {answer.sent} bytes before refusing"


def test_an_over_long_prompt_is_400_through_the_api_and_serve_never_tokenises_it(service: LiveService) -> None:
    _, key = make_tenant()
    before = serve_status(service)["tokenising"]
    too_long = "ab " * (2048 * 13 // 3 + 1)  # over the tiny model's context (2,048) × 13 characters per token
    chat = httpx.post(f"{service.url}/v1/chat/completions", headers=auth(key), timeout=30,
                      json={**CHAT, "messages": [{"role": "user", "content": too_long}]})
    err = assert_error(chat, 400, "context_length_exceeded", param="messages")
    assert "2048 tokens" in err["message"]
    text = httpx.post(f"{service.url}/v1/completions", headers=auth(key), timeout=30,
                      json={"model": "tiny-llama", "prompt": too_long, "max_tokens": 2})
    assert_error(text, 400, "context_length_exceeded", param="prompt")
    after = serve_status(service)["tokenising"]
    assert (after["calls"], after["refused"]) == (before["calls"], before["refused"] + 2)


def test_a_tenant_at_its_generation_cap_gets_429_through_the_api_while_another_is_served(
        service: LiveService) -> None:
    (_, greedy), (_, other) = make_tenant(), make_tenant()
    hold = {**CHAT, "n": CAP, "max_tokens": 1500, "stream": True, "messages": [{"role": "user", "content": "count"}]}
    with httpx.Client(base_url=service.url, timeout=30) as client, \
            client.stream("POST", "/v1/chat/completions", json=hold, headers=auth(greedy)) as held:
        assert held.status_code == 200
        chunks = held.iter_raw()  # kept: a dropped iterator closes the stream
        next(chunks)  # its sequences are decoding
        refused = client.post("/v1/chat/completions", json=CHAT, headers=auth(greedy))
        err = assert_error(refused, 429, "rate_limit_exceeded")
        assert "TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES" in err["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        served = client.post("/v1/chat/completions", json=CHAT, headers=auth(other))
        assert served.status_code == 200, served.text
