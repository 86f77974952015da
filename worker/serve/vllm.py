"""The optional vLLM backend (TUNEQUEUE_SERVE_BACKEND=vllm): `serve` forwards to a vLLM OpenAI server started
with LoRA enabled and runtime adapter updates allowed, loading each adapter into it on first use through vLLM's
/v1/load_lora_adapter and unloading the least recently used past TUNEQUEUE_SERVE_MAX_ADAPTERS (and deleted ones).

vLLM reads the adapter from a folder on its own filesystem: the artifact store must be mounted at the same path
in both (docs/inference.md shows how to start vLLM). vLLM never sees an adapter it cannot run (rank above its
--max-lora-rank, DoRA…): `engine_for` sends it to serve's built-in engine when that can run it, and refuses it with
400 when neither can (modules_to_save, LoRA variants); the model object says so too (`vllm`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

from fastapi import Response

from common.adapter_support import serving_problems, vllm_compatibility
from common.artifacts import ArtifactStore
from common.errors import NotReady, model_not_found
from common.proxy import StreamingProxy
from common.settings import Settings
from worker.serve.catalog import Target
from worker.serve.lora import UnsupportedAdapter

log = logging.getLogger("tunequeue.serve")

EngineName = Literal["vllm", "builtin"]
ENGINE_HEADER = "x-tunequeue-engine"  # on every answer of serve: which engine generated it


class VllmBackend:
    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.proxy = StreamingProxy(settings.serve_vllm_url, name="the vLLM server (TUNEQUEUE_SERVE_VLLM_URL)",
                                    code_prefix="backend")
        self.loaded: OrderedDict[str, None] = OrderedDict()  # adapter ids in vLLM, most recently used last
        self.engines: dict[str, EngineName] = {}  # adapter id → the engine that serves it (engine_for)
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def lock(self) -> asyncio.Lock:
        """One lock per event loop, like the proxy's client."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def adapter_dir(self, target: Target) -> Path:
        assert target.storage_key is not None
        dest = self.settings.work_path / "serve-adapters" / target.storage_key
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (dest / name).is_file():
                self.store.fetch(f"{target.storage_key}/{name}", dest / name)
        return dest

    async def route(self, target: Target) -> EngineName:
        """`engine_for`, off the event loop when it has to read the adapter's config."""
        if target.adapter_id is None:
            return "vllm"
        engine = self.engines.get(target.adapter_id)
        return engine if engine is not None else await asyncio.to_thread(self.engine_for, target)

    def engine_for(self, target: Target) -> EngineName:
        """Which engine serves `target`: vLLM for base models and the adapters it can load, serve's built-in engine
        for those it cannot but the built-in engine can (DoRA, a rank above --max-lora-rank). Raises
        UnsupportedAdapter when neither can. Blocking (reads the adapter's config): call it from a worker thread."""
        if target.adapter_id is None:
            return "vllm"
        engine = self.engines.get(target.adapter_id)
        if engine is not None:
            return engine
        try:
            with self.store.open(f"{target.storage_key}/adapter_config.json") as fh:
                config = json.loads(fh.read())
        except FileNotFoundError:
            raise model_not_found(target.adapter_id, "Its adapter files are missing from the artifact store.") from None
        note = vllm_compatibility(config, self.settings.serve_vllm_max_lora_rank)
        if note.compatible:
            engine = "vllm"
        elif not serving_problems(config):
            engine = "builtin"
            log.info("%s goes to the built-in engine: vLLM cannot load it (%s)", target.adapter_id,
                     "; ".join(note.problems))
        else:
            raise UnsupportedAdapter(f"{target.adapter_id} cannot be served by vLLM or by serve's built-in engine: "
                                     f"{'; '.join(note.problems)}", param="model")
        self.engines[target.adapter_id] = engine
        return engine

    async def ensure(self, target: Target) -> str:
        """The name to send vLLM as `model`: the base id (vLLM's --served-model-name), or the adapter, loaded."""
        if target.adapter_id is None:
            return target.base_model
        async with self.lock():
            if target.adapter_id in self.loaded:
                self.loaded.move_to_end(target.adapter_id)
                return target.adapter_id
            if await asyncio.to_thread(self.engine_for, target) != "vllm":
                raise UnsupportedAdapter(f"{target.adapter_id} cannot be served by vLLM", param="model")
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
        self.engines.pop(model_id, None)
        async with self.lock():
            if self.loaded.pop(model_id, "absent") is None:
                await self.proxy.post("/v1/unload_lora_adapter", {"lora_name": model_id})

    async def forward(self, path: str, body: dict[str, Any], stream: bool) -> Response:
        return await self.proxy.forward(path, body, stream=stream)
