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

from fastapi import Response

from common.adapter_support import vllm_compatibility
from common.artifacts import ArtifactStore
from common.errors import NotReady
from common.proxy import StreamingProxy
from common.settings import Settings
from worker.serve.catalog import Target
from worker.serve.lora import UnsupportedAdapter

log = logging.getLogger("tunequeue.serve")


class VllmBackend:
    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.proxy = StreamingProxy(settings.serve_vllm_url, name="the vLLM server (TUNEQUEUE_SERVE_VLLM_URL)",
                                    code_prefix="backend")
        self.loaded: OrderedDict[str, None] = OrderedDict()  # adapter ids in vLLM, most recently used last
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def lock(self) -> asyncio.Lock:
        """One lock per event loop, like the proxy's client."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

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

    async def ensure(self, target: Target) -> str:
        """The name to send vLLM as `model`: the base id (vLLM's --served-model-name), or the adapter, loaded."""
        if target.adapter_id is None:
            return target.base_model
        async with self.lock():
            if target.adapter_id in self.loaded:
                self.loaded.move_to_end(target.adapter_id)
                return target.adapter_id
            await asyncio.to_thread(self.check, target)
            path = await asyncio.to_thread(self.adapter_dir, target)
            resp = await self.proxy.post("/v1/load_lora_adapter", {"lora_name": target.adapter_id,
                                                                   "lora_path": str(path)})
            if resp.status_code >= 400 and "already been loaded" not in resp.text:
                raise NotReady(f"vLLM refused to load {target.adapter_id}: {resp.text[:500]}",
                               code="backend_error")
            self.loaded[target.adapter_id] = None
            while len(self.loaded) > self.settings.serve_max_adapters:
                victim, _ = self.loaded.popitem(last=False)
                await self.proxy.post("/v1/unload_lora_adapter", {"lora_name": victim})
            return target.adapter_id

    async def forget(self, model_id: str) -> None:
        async with self.lock():
            if self.loaded.pop(model_id, "absent") is None:
                await self.proxy.post("/v1/unload_lora_adapter", {"lora_name": model_id})

    async def forward(self, path: str, body: dict[str, Any], stream: bool) -> Response:
        return await self.proxy.forward(path, body, stream=stream)
