"""TUNEQUEUE_SERVE_BACKEND=vllm against a stand-in for vLLM's OpenAI server (its LoRA runtime API and chat
endpoint, over real HTTP; vLLM itself needs a GPU: tests/deploy/test_vllm_gpu.py): adapters are loaded on first
use, the least recently used unloaded, deleted ones unloaded; adapters vLLM cannot run (DoRA, a rank above its
limit) are answered by serve's built-in engine without vLLM seeing them, and those neither engine can run are
refused. Every answer names its engine in `x-tunequeue-engine`."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import SecretStr

from common.settings import BaseModelEntry, Settings
from tests.support.adapters import copy_adapter, random_adapter
from tests.support.servers import free_port
from tests.support.serving import SERVE_HEADERS, SERVE_TOKEN, publish
from worker.serve.app import create_app
from worker.serve.bases import device_key
from worker.serve.catalog import Catalog
from worker.serve.server import ModelServer
from worker.serve.vllm import ENGINE_HEADER

pytestmark = pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")


class FakeVllm:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        app = FastAPI()

        @app.post("/v1/load_lora_adapter")
        def load(body: dict[str, Any]) -> str:
            assert (Path(body["lora_path"]) / "adapter_model.safetensors").is_file()
            self.calls.append(("load", body))
            return "ok"

        @app.post("/v1/unload_lora_adapter")
        def unload(body: dict[str, Any]) -> str:
            self.calls.append(("unload", body))
            return "ok"

        @app.post("/v1/chat/completions")
        def chat(body: dict[str, Any]) -> Any:
            self.calls.append(("chat", body))
            if body.get("stream"):
                chunk = {"object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
                return StreamingResponse(iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]),
                                         media_type="text/event-stream")
            return {"object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                 "finish_reason": "stop"}]}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def names(self, kind: str) -> list[str]:
        return [str(body.get("lora_name") or body.get("model")) for k, body in self.calls if k == kind]

    def all_names(self) -> set[str]:
        """Every model or adapter name any request to the stand-in carried."""
        return {str(body.get("lora_name") or body.get("model")) for _, body in self.calls}


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    fake.thread.start()
    while not fake.server.started:
        time.sleep(0.01)
    yield fake
    fake.server.should_exit = True
    fake.thread.join(5)


def vllm_settings(vllm: FakeVllm, tiny_model: Path, **kw: Any) -> Settings:
    return Settings(base_models={"tiny-llama": BaseModelEntry(path=str(tiny_model), template="chatml")},
                    serve_backend="vllm", serve_vllm_url=f"http://127.0.0.1:{vllm.port}",
                    serve_token=SecretStr(SERVE_TOKEN), **kw)


def chat(http: TestClient, model: str, **kw: Any) -> Any:
    return http.post("/v1/chat/completions", json={"model": model, "max_tokens": 12, "temperature": 0,
                                                   "messages": [{"role": "user", "content": "hello"}], **kw})


def streamed_text(resp: Any) -> str:
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n"), resp.text[-300:]
    chunks = [json.loads(line[len("data: "):]) for line in resp.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def eventually(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def builtin_answers(tiny_model: Path, adapter: Path, model_id: str) -> tuple[str, str]:
    """What serve's built-in engine alone (the local backend) answers, greedily, for the adapter and its base."""
    settings = Settings(base_models={"tiny-llama": BaseModelEntry(path=str(tiny_model), template="chatml")},
                        serve_token=SecretStr(SERVE_TOKEN))
    local = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    publish(local, adapter, model_id)
    with TestClient(create_app(settings, local), headers=SERVE_HEADERS) as http:
        tuned, base = chat(http, model_id), chat(http, "tiny-llama")
    assert tuned.status_code == base.status_code == 200, (tuned.text, base.text)
    assert tuned.headers[ENGINE_HEADER] == "builtin"
    return tuned.json()["choices"][0]["message"]["content"], base.json()["choices"][0]["message"]["content"]


def test_vllm_backend_loads_evicts_and_unloads_deleted_adapters(vllm: FakeVllm, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    settings = vllm_settings(vllm, tiny_model, serve_max_adapters=2)
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    ids = []
    for i, r in enumerate([8, 8, 8]):
        ids.append(f"ft:tiny-llama:v{i}:ftjob-vllm{i}")
        publish(model_server, random_adapter(tiny_model, tmp_path / f"a{i}", seed=i, r=r), ids[-1])
    with TestClient(create_app(settings, model_server), headers=SERVE_HEADERS) as http:
        def chat(model: str, **kw: Any) -> Any:
            return http.post("/v1/chat/completions",
                             json={"model": model, "messages": [{"role": "user", "content": "x"}], **kw})

        for model in (ids[0], ids[1], ids[0], ids[2]):
            resp = chat(model)
            assert resp.status_code == 200 and resp.json()["model"] == model, resp.text
        assert vllm.names("load") == ids[:3]
        assert vllm.names("unload") == [ids[1]]  # ids[0] was used more recently
        assert chat("tiny-llama").json()["model"] == "tiny-llama"
        streamed = chat(ids[2], stream=True)
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")

        model_server.on_event({"event": "deleted", "model": ids[0]})
        deadline = time.monotonic() + 5
        while ids[0] not in vllm.names("unload") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert vllm.names("unload") == [ids[1], ids[0]]
        assert chat(ids[0]).status_code == 404
        assert not model_server.pool.loaded  # base models and vLLM-compatible adapters: serve loads nothing


def test_dora_adapter_is_answered_by_the_builtin_engine_as_the_builtin_engine_alone_answers_it(
        vllm: FakeVllm, tiny_model: Path, tmp_path: Path) -> None:
    dora, lora = "ft:tiny-llama:dora:ftjob-route1", "ft:tiny-llama:lora:ftjob-route2"
    dora_dir = random_adapter(tiny_model, tmp_path / "dora", seed=5, r=8, use_dora=True)
    expected, base_alone = builtin_answers(tiny_model, dora_dir, dora)
    assert expected != base_alone, "the DoRA adapter should change the answer, or this test proves nothing"

    settings = vllm_settings(vllm, tiny_model)
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    publish(model_server, dora_dir, dora)
    publish(model_server, random_adapter(tiny_model, tmp_path / "lora", seed=6, r=8), lora)
    with TestClient(create_app(settings, model_server), headers=SERVE_HEADERS) as http:
        answer = chat(http, dora)
        assert answer.status_code == 200, answer.text
        assert answer.headers[ENGINE_HEADER] == "builtin"
        assert answer.json()["model"] == dora
        assert answer.json()["choices"][0]["message"]["content"] == expected
        streamed = chat(http, dora, stream=True)
        assert streamed.headers[ENGINE_HEADER] == "builtin"
        assert streamed_text(streamed) == expected
        assert dora not in vllm.all_names(), "vLLM must not see an adapter it cannot run"
        assert http.get("/status").json()["vllm"]["builtin_adapters"] == [dora]

        # A plain LoRA adapter and the base model still go to vLLM, streamed or not.
        for model in (lora, "tiny-llama"):
            for stream in (False, True):
                resp = chat(http, model, stream=stream)
                assert resp.status_code == 200 and resp.headers[ENGINE_HEADER] == "vllm", resp.text
                assert vllm.names("chat")[-1] == model
        assert lora in vllm.names("load")
        assert http.get("/status").json()["vllm"] == {"adapters": [lora], "builtin_adapters": [dora]}

        completion = http.post("/v1/completions", json={"model": dora, "prompt": "hello", "max_tokens": 4,
                                                        "temperature": 0})
        assert completion.status_code == 200 and completion.headers[ENGINE_HEADER] == "builtin", completion.text

        model_server.on_event({"event": "deleted", "model": dora})
        eventually(lambda: dora not in http.get("/status").json()["vllm"]["builtin_adapters"])
        assert chat(http, dora).status_code == 404
        assert dora not in vllm.all_names()


def test_adapter_neither_engine_can_run_is_refused_with_400_naming_the_field_and_the_fix(
        vllm: FakeVllm, tiny_model: Path, tmp_path: Path) -> None:
    saves = "ft:tiny-llama:saves:ftjob-route3"
    plain = random_adapter(tiny_model, tmp_path / "lora", seed=7, r=8)
    settings = vllm_settings(vllm, tiny_model)
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    publish(model_server, copy_adapter(plain, tmp_path / "saves", modules_to_save=["lm_head"]), saves)
    with TestClient(create_app(settings, model_server), headers=SERVE_HEADERS) as http:
        for stream in (False, True):
            refused = chat(http, saves, stream=stream)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "unsupported_adapter" and error["param"] == "model"
            assert error["type"] == "invalid_request_error"
            assert "vLLM or by serve's built-in engine" in error["message"]
            assert "train without method.lora.modules_to_save" in error["message"]
    assert saves not in vllm.all_names()
    assert "tiny-llama" not in model_server.pool.loaded  # nothing was loaded for it (nor preloaded on publish)


def test_publishing_an_adapter_vllm_cannot_run_preloads_it_into_the_builtin_engine_and_a_plain_one_not(
        vllm: FakeVllm, tiny_model: Path, tmp_path: Path) -> None:
    settings = vllm_settings(vllm, tiny_model)
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    lora, big = "ft:tiny-llama:lora:ftjob-route4", "ft:tiny-llama:big:ftjob-route5"
    publish(model_server, random_adapter(tiny_model, tmp_path / "lora", seed=8, r=8), lora)
    time.sleep(1.0)
    assert not model_server.pool.loaded, "a vLLM-compatible adapter must not load the built-in engine"
    publish(model_server, random_adapter(tiny_model, tmp_path / "big", seed=9, r=32), big)  # > --max-lora-rank 16
    eventually(lambda: "tiny-llama" in model_server.pool.loaded
               and big in model_server.pool.loaded["tiny-llama"].engine.bank)
    assert lora not in model_server.pool.loaded["tiny-llama"].engine.bank
    assert not {lora, big} & vllm.all_names()  # vLLM loads adapters on their first request, not on publish
    model_server.close()


def test_training_on_serves_device_releases_the_builtin_engines_base_and_holds_preloads_under_vllm(
        vllm: FakeVllm, tiny_model: Path, tmp_path: Path) -> None:
    dora = "ft:tiny-llama:dora:ftjob-route6"
    settings = vllm_settings(vllm, tiny_model)
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    publish(model_server, random_adapter(tiny_model, tmp_path / "dora", seed=10, r=8, use_dora=True), dora)
    with TestClient(create_app(settings, model_server), headers=SERVE_HEADERS) as http:
        assert chat(http, dora).headers[ENGINE_HEADER] == "builtin"
        assert "tiny-llama" in model_server.pool.loaded
        # The engine thread retires the answered request just after the answer is out: only an idle base is
        # released (a busy one stays), so the announcement comes once the engine is idle.
        eventually(lambda: not model_server.pool.loaded["tiny-llama"].engine.busy)
        announcement = {"host": socket.gethostname(), "device": device_key(model_server.pool.device),
                        "job": "ftjob-trains-here"}
        model_server.on_event({"event": "training_started", **announcement})
        assert "tiny-llama" not in model_server.pool.loaded and model_server.pool.released == ["tiny-llama"]
        assert chat(http, "tiny-llama").headers[ENGINE_HEADER] == "vllm"  # vLLM is not concerned
        later = "ft:tiny-llama:dora:ftjob-route8"
        publish(model_server, random_adapter(tiny_model, tmp_path / "later", seed=12, r=8, use_dora=True), later)
        time.sleep(1.0)
        assert "tiny-llama" not in model_server.pool.loaded, "publishing must not preload during training"
        model_server.on_event({"event": "training_ended", **announcement})
        eventually(lambda: "tiny-llama" in model_server.pool.loaded)


def test_a_fallback_load_without_device_memory_is_a_503_naming_the_settings_and_a_retry_loads_it(
        vllm: FakeVllm, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import transformers

    dora = "ft:tiny-llama:dora:ftjob-route7"
    real = transformers.AutoModelForCausalLM.from_pretrained

    def out_of_memory(*args: Any, **kw: Any) -> Any:  # vLLM beside serve holds the GPU
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    adapter = random_adapter(tiny_model, tmp_path / "dora", seed=11, r=8, use_dora=True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", out_of_memory)
    settings = vllm_settings(vllm, tiny_model)
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    publish(model_server, adapter, dora)
    with TestClient(create_app(settings, model_server), headers=SERVE_HEADERS) as http:
        refused = chat(http, dora)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "model_overloaded" and error["param"] == "model"
        assert "--gpu-memory-utilization" in error["message"] and "TUNEQUEUE_SERVE_MEMORY_MB" in error["message"]
        assert not model_server.pool.loaded
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", real)
        answer = chat(http, dora)
        assert answer.status_code == 200 and answer.headers[ENGINE_HEADER] == "builtin", answer.text
