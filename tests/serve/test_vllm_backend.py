"""TUNEQUEUE_SERVE_BACKEND=vllm against a stand-in for vLLM's OpenAI server (its LoRA runtime API and chat
endpoint, over real HTTP): adapters are loaded on first use, the least recently used unloaded, deleted ones
unloaded, and adapters vLLM cannot run are refused before it sees them."""

from __future__ import annotations

import json
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
from tests.support.adapters import random_adapter
from tests.support.servers import free_port
from tests.support.serving import SERVE_HEADERS, SERVE_TOKEN, publish
from worker.serve.app import create_app
from worker.serve.catalog import Catalog
from worker.serve.server import ModelServer

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


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    fake.thread.start()
    while not fake.server.started:
        time.sleep(0.01)
    yield fake
    fake.server.should_exit = True
    fake.thread.join(5)


def test_vllm_backend_loads_evicts_and_refuses(vllm: FakeVllm, tiny_model: Path, tmp_path: Path) -> None:
    settings = Settings(base_models={"tiny-llama": BaseModelEntry(path=str(tiny_model), template="chatml")},
                        serve_backend="vllm", serve_vllm_url=f"http://127.0.0.1:{vllm.port}",
                        serve_max_adapters=2, serve_token=SecretStr(SERVE_TOKEN))
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    ids = []
    for i, r in enumerate([8, 8, 8, 32]):
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

        refused = chat(ids[3])
        assert refused.status_code == 400 and "max-lora-rank" in refused.json()["error"]["message"]
        assert ids[3] not in vllm.names("load")

        model_server.on_event({"event": "deleted", "model": ids[0]})
        deadline = time.monotonic() + 5
        while ids[0] not in vllm.names("unload") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert vllm.names("unload") == [ids[1], ids[0]]
        assert chat(ids[0]).status_code == 404
        assert not model_server.pool.loaded  # vLLM holds the models; serve loads none
