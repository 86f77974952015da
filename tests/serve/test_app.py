"""The serve HTTP app in-process, driven by the official openai SDK and by raw requests for the error cases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from common.serve_token import TENANT_HEADER
from common.settings import Settings
from tests.support.serving import PHRASE, PHRASE_MESSAGES, SERVE_HEADERS, SERVE_TOKEN, TENANT
from worker.serve.app import create_app
from worker.serve.server import ModelServer
from worker.serve.text import StopMatcher

pytestmark = pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")

@pytest.fixture(scope="module")
def http(serve_settings: Settings, model_server: ModelServer) -> Iterator[TestClient]:
    with TestClient(create_app(serve_settings, model_server), headers=SERVE_HEADERS) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(http: TestClient) -> openai.OpenAI:
    # As the API calls serve: the serve token as the key, the tenant in its header.
    return openai.OpenAI(base_url="http://testserver/v1", api_key=SERVE_TOKEN, http_client=http, max_retries=0,
                         default_headers={TENANT_HEADER: TENANT})


def test_chat_with_and_without_stream(sdk: openai.OpenAI, phrase_adapter: str) -> None:
    reply = sdk.chat.completions.create(model=phrase_adapter, messages=PHRASE_MESSAGES, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == PHRASE and reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 3 and reply.usage.prompt_tokens > 3
    chunks = list(sdk.chat.completions.create(model=phrase_adapter, messages=PHRASE_MESSAGES, temperature=0,  # type: ignore[call-overload]
                                              stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PHRASE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage


def test_completions_several_prompts_n_and_echo(sdk: openai.OpenAI) -> None:
    out = sdk.completions.create(model="tiny-llama", prompt=["The worker", "A user"], n=2, max_tokens=4, echo=True,
                                 temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert all(c.text.startswith(p) for c, p in zip(out.choices, ["The worker"] * 2 + ["A user"] * 2, strict=True))
    assert out.choices[0].text == out.choices[1].text  # greedy: both choices of one prompt agree
    assert out.usage is not None and out.usage.completion_tokens == 16
    for seed in (-3, 2**70):  # any int is a seed
        assert sdk.completions.create(model="tiny-llama", prompt="x", max_tokens=2, seed=seed).choices[0].finish_reason
    streamed = list(sdk.completions.create(model="tiny-llama", prompt="The worker", max_tokens=4, temperature=0,
                                           stream=True))
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text[len("The worker"):]


def _error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err  # type: ignore[no-any-return]


BAD = [
    ({"temperature": 3}, 422, None), ({"n": 0}, 422, None), ({"top_p": 0}, 422, None),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, None), ({"max_tokens": 0}, 422, None), ({"bogus": 1}, 422, None),
    ({"messages": []}, 422, None), ({"messages": [{"role": "wizard", "content": "x"}]}, 422, None),
    ({"logprobs": True}, 400, "unsupported_parameter"), ({"presence_penalty": 1}, 400, "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "unsupported_content"),
    ({"max_tokens": 5000}, 400, "context_length_exceeded"),
    ({"frequency_penalty": -1}, 400, "unsupported_parameter"), ({"logit_bias": {"5": 1}}, 400, "unsupported_parameter"),
    ({"top_logprobs": 2}, 400, "unsupported_parameter"), ({"tool_choice": "auto"}, 400, "unsupported_parameter"),
    ({"functions": [{"name": "f"}]}, 400, "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, 400, "unsupported_parameter"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, 400, "invalid_value"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 400, "unsupported_parameter"),
    ({"stop": ["ok", ""]}, 422, None), ({"temperature": "hot"}, 422, None), ({"model": ""}, 422, None),
    ({"stream_options": {"include_usage": True}}, 400, "invalid_value"),
    ({"model": "ft:tiny-llama:nope:ftjob-nope"}, 404, "model_not_found"),
]


@pytest.mark.parametrize(("change", "status", "code"), BAD, ids=[json.dumps(b[0])[:40] for b in BAD])
def test_bad_requests_get_the_error_shape(http: TestClient, change: dict[str, Any], status: int,
                                          code: str | None) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], **change}
    _error(http.post("/v1/chat/completions", json=body), status, code)


def test_bad_completion_requests(http: TestClient) -> None:
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"logprobs": 2}, 400, "unsupported_parameter"), ({"best_of": 3}, 400, "unsupported_parameter"),
        ({"prompt": ["a"] * 5, "n": 4}, 400, "invalid_value"), ({"prompt": ["a"] * 17}, 422, None),
        ({"prompt": []}, 422, None), ({"echo": "maybe"}, 422, None)]
    for change, status, code in cases:
        _error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": "x", **change}), status, code)
    _error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": "x", "suffix": "y"}), 400,
           "unsupported_parameter")
    _error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": [1, 2]}), 422)
    _error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": "x " * 3000}), 400,
           "context_length_exceeded")


def test_stop_matcher_holds_back_partial_stops() -> None:
    stop = StopMatcher(["END", "xyz"])
    assert stop.feed("hello E") == ("hello ", False)
    assert stop.feed("N") == ("", False)
    assert stop.feed("Dless") == ("", True)
    other = StopMatcher(["END"])
    assert other.feed("E") == ("", False)
    assert other.feed("a") == ("Ea", False)
    assert other.feed("E") == ("", False) and other.flush() == "E"
