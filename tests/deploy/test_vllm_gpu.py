"""serve's vLLM backend against a real vLLM, started with the flags docker-compose.yml's `vllm` service gives it
(--enable-lora, --max-lora-rank, --max-loras, --max-cpu-loras, runtime adapter loading): the base model and a LoRA
adapter answer through serve, the adapter is loaded into vLLM at its first request, and a DoRA adapter (which vLLM
cannot run) is answered by serve's built-in engine without vLLM loading it. Needs a CUDA GPU and the `vllm`
package: skipped without them; scripts/gpu-check runs it.

(Without a GPU, tests/serve/test_vllm_backend.py checks the same backend against a stand-in of vLLM's HTTP API.)"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.servers import REPO, free_port

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


requires_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _cuda(),
                                   reason="needs a CUDA GPU and the vllm package (scripts/gpu-check)")


def compose_vllm_argv() -> list[str]:
    """The `vllm` service's entrypoint + command with compose's defaults (`${VAR:-default}`) filled in."""
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["vllm"]
    argv = [*service["entrypoint"], *service["command"]]
    return [re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(arg)) for arg in argv]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("vllm-base") / "tiny-llama"
    build_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def real_vllm(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    argv = compose_vllm_argv()
    assert argv[:2] == ["vllm", "serve"] and "--enable-lora" in argv
    port = free_port()
    argv[2] = str(base_model)
    argv[argv.index("--port") + 1] = str(port)
    executable = shutil.which("vllm") or str(Path(sys.executable).parent / "vllm")
    log = (tmp_path_factory.mktemp("vllm-log") / "vllm.log").open("wb")
    # The check machine's GPU may be shared with other checks: a modest share of its memory is enough here.
    proc = subprocess.Popen([executable, *argv[1:], "--host", "127.0.0.1", "--gpu-memory-utilization", "0.3"],
                            env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + float(os.environ.get("TUNEQUEUE_TEST_VLLM_START_SECONDS", "300"))
        while True:
            assert proc.poll() is None, f"vLLM exited ({proc.returncode}): see {log.name}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"vLLM did not answer /health in time: see {log.name}"
            time.sleep(2)
        yield url, argv
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@requires_vllm
def test_serve_forwards_to_a_real_vllm_started_as_compose_starts_it(
        real_vllm: tuple[str, list[str]], base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from common.settings import BaseModelEntry, Settings
    from tests.support.adapters import random_adapter
    from tests.support.serving import SERVE_HEADERS, SERVE_TOKEN, publish
    from worker.serve.app import create_app
    from worker.serve.catalog import Catalog
    from worker.serve.server import ModelServer

    url, argv = real_vllm
    model_id = flag(argv, "--served-model-name")
    monkeypatch.chdir(tmp_path)  # the artifact store and serve's work folder under tmp (same host as vLLM)
    settings = Settings(base_models={model_id: BaseModelEntry(path=str(base_model), template="chatml")},
                        artifacts=str(tmp_path / "artifacts"), work_dir=str(tmp_path / "work"),
                        serve_backend="vllm", serve_vllm_url=url,
                        serve_vllm_max_lora_rank=int(flag(argv, "--max-lora-rank")),
                        serve_max_adapters=int(flag(argv, "--max-cpu-loras")),
                        serve_token=SecretStr(SERVE_TOKEN), _env_file=None)  # type: ignore[call-arg]
    model_server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    lora, dora = "ft:tiny-llama:lora:ftjob-gpuvllm1", "ft:tiny-llama:dora:ftjob-gpuvllm2"
    publish(model_server, random_adapter(base_model, tmp_path / "lora", seed=1, r=8), lora, base_model=model_id)
    publish(model_server, random_adapter(base_model, tmp_path / "dora", seed=2, r=8, use_dora=True), dora,
            base_model=model_id)

    def loaded_in_vllm() -> set[str]:
        return {entry["id"] for entry in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}

    with TestClient(create_app(settings, model_server), headers=SERVE_HEADERS) as http:
        def chat(model: str, **kw: Any) -> Any:
            return http.post("/v1/chat/completions", json={"model": model, "max_tokens": 8, "temperature": 0,
                                                           "messages": [{"role": "user", "content": "hello"}], **kw})

        base = chat(model_id)
        assert base.status_code == 200 and base.json()["model"] == model_id, base.text
        assert lora not in loaded_in_vllm()
        tuned = chat(lora)
        assert tuned.status_code == 200 and tuned.json()["model"] == lora, tuned.text
        assert tuned.json()["usage"]["completion_tokens"] > 0
        assert lora in loaded_in_vllm(), "serve did not load the adapter into vLLM"
        streamed = chat(lora, stream=True)
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), streamed.text[-200:]
        assert tuned.headers["x-tunequeue-engine"] == base.headers["x-tunequeue-engine"] == "vllm"
        # DoRA: vLLM's LoRA kernels cannot run it; serve's built-in engine answers it, vLLM never loads it.
        fallback = chat(dora)
        assert fallback.status_code == 200 and fallback.json()["model"] == dora, fallback.text
        assert fallback.headers["x-tunequeue-engine"] == "builtin"
        assert dora not in loaded_in_vllm()
