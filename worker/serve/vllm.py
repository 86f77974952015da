"""The optional vLLM backend (TUNEQUEUE_SERVE_BACKEND=vllm): `serve` forwards to a vLLM OpenAI server started
with LoRA enabled and runtime adapter updates allowed, loading each adapter into it on first use through vLLM's
/v1/load_lora_adapter and unloading the least recently used past TUNEQUEUE_SERVE_MAX_ADAPTERS (and deleted ones).

vLLM reads the adapter from a folder on its own filesystem: the artifact store must be mounted at the same path
in both (docs/inference.md shows how to start vLLM). An adapter vLLM cannot run (rank above its --max-lora-rank,
modules_to_save, DoRA…) is refused with 400 before vLLM sees it; the model object says so too (`vllm`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from common.artifacts import ArtifactStore
from common.errors import NotReady
from common.services.models import vllm_compatibility
from worker.serve.catalog import Target
from worker.serve.config import ServeSettings
from worker.serve.lora import UnsupportedAdapter

log = logging.getLogger("tunequeue.serve")
TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0)


class VllmBackend:
    def __init__(self, settings: ServeSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.url = settings.serve_vllm_url.rstrip("/")
        self.loaded: OrderedDict[str, None] = OrderedDict()  # adapter ids in vLLM, most recently used last
        self._lock: asyncio.Lock | None = None
        self._client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            self._client = (loop, httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=None)))
            self._lock = asyncio.Lock()
        return self._client[1]

    def adapter_dir(self, target: Target) -> Path:
        assert target.storage_key is not None
        local = getattr(self.store, "local_path", None)
        if local is not None:
            return Path(local(target.storage_key))
        dest = self.settings.work_path / "serve-adapters" / target.storage_key
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (dest / name).is_file():
                self.store.fetch(f"{target.storage_key}/{name}", dest / name)
        return dest

    def check(self, target: Target) -> None:
        with self.store.open(f"{target.storage_key}/adapter_config.json") as fh:
            note = vllm_compatibility(json.loads(fh.read()), self.settings.serve_vllm_max_lora_rank)
        if not note.compatible:
            raise UnsupportedAdapter(f"{target.adapter_id} cannot be served by vLLM: {'; '.join(note.problems)}",
                                     param="model")

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client().post(self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise NotReady(f"the vLLM server at {self.url} (TUNEQUEUE_SERVE_VLLM_URL) is not reachable: "
                           f"{type(exc).__name__}", code="backend_unavailable") from exc

    async def ensure(self, target: Target) -> str:
        """The name to send vLLM as `model`: the base id (vLLM's --served-model-name), or the adapter, loaded."""
        if target.adapter_id is None:
            return target.base_model
        self.client()
        assert self._lock is not None
        async with self._lock:
            if target.adapter_id in self.loaded:
                self.loaded.move_to_end(target.adapter_id)
                return target.adapter_id
            await asyncio.to_thread(self.check, target)
            path = await asyncio.to_thread(self.adapter_dir, target)
            resp = await self._post("/v1/load_lora_adapter", {"lora_name": target.adapter_id, "lora_path": str(path)})
            if resp.status_code >= 400 and "already been loaded" not in resp.text:
                raise NotReady(f"vLLM refused to load {target.adapter_id}: {resp.text[:500]}",
                               code="backend_error")
            self.loaded[target.adapter_id] = None
            while len(self.loaded) > self.settings.serve_max_adapters:
                victim, _ = self.loaded.popitem(last=False)
                await self._post("/v1/unload_lora_adapter", {"lora_name": victim})
            return target.adapter_id

    async def forget(self, model_id: str) -> None:
        self.client()
        assert self._lock is not None
        async with self._lock:
            if self.loaded.pop(model_id, "absent") is None:
                await self._post("/v1/unload_lora_adapter", {"lora_name": model_id})

    async def forward(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        client = self.client()
        request = client.build_request("POST", self.url + path, json=body)
        try:
            resp = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise NotReady(f"the vLLM server at {self.url} is not reachable: {type(exc).__name__}",
                           code="backend_unavailable") from exc
        if resp.status_code != 200 or not stream:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            try:
                data = json.loads(content)
            except ValueError:
                raise NotReady(f"vLLM answered {resp.status_code} without JSON", code="backend_error") from None
            if resp.status_code != 200 and isinstance(data, dict) and "error" not in data:
                # Older vLLM: {"object": "error", "message", "type", "param", "code"}; ours is OpenAI's.
                data = {"error": {"message": data.get("message", str(data)), "type": data.get("type"),
                                  "param": data.get("param"), "code": str(data.get("code", resp.status_code))}}
            return JSONResponse(status_code=resp.status_code, content=data)
        return StreamingResponse(resp.aiter_raw(), media_type="text/event-stream",
                                 background=BackgroundTask(resp.aclose), headers={"Cache-Control": "no-cache"})
