"""`ModelServer`: what the serve process holds — the catalog of ids, the loaded base models, the artifact store, the
vLLM backend when configured (the loaded base models then serve only the adapters vLLM cannot run), the tokeniser's
threads and each tenant's sequences in flight — and the listener on
`tunequeue:models` (common/model_events.py) that makes a published adapter available at once and a deleted one
disappear."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from typing import Any

from common.artifacts import ArtifactStore, get_store
from common.errors import model_not_found
from common.model_events import models_channel
from common.redis_client import sync_redis
from common.settings import Settings
from worker.serve.bases import BasePool, LoadedBase, device_key
from worker.serve.catalog import Catalog, Target
from worker.serve.fairness import TenantSlots
from worker.serve.lora import LoraAdapter, parse_adapter, read_adapter_files
from worker.serve.tokenise import Tokeniser
from worker.serve.vllm import VllmBackend

log = logging.getLogger("tunequeue.serve")


class ModelServer:
    def __init__(self, settings: Settings, *, store: ArtifactStore | None = None,
                 catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.store = store or get_store(settings.artifacts)
        self.catalog = catalog or Catalog(settings)
        self.pool = BasePool(settings, self._load_for_engine)
        self.listener: ModelEvents | None = None
        self.vllm = VllmBackend(settings, self.store) if settings.serve_backend == "vllm" else None
        self.loop: asyncio.AbstractEventLoop | None = None  # the HTTP app's, for calls from the listener
        self.tokeniser = Tokeniser()
        self.slots = TenantSlots(settings.serve_tenant_max_sequences)

    def start(self, *, listen: bool = True, warm: bool = True) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop = asyncio.get_running_loop()
        if self.vllm is not None:
            warm = False  # vLLM holds the models
        if warm:
            threading.Thread(target=self.pool.warm, name="serve-warm-up", daemon=True).start()
        if listen:
            self.listener = ModelEvents(self.settings.redis_url, self.on_event)
            self.listener.start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.tokeniser.close()
        self.pool.close()

    def load_adapter(self, target: Target, base: LoadedBase) -> LoraAdapter:
        """Read and check an adapter's files (blocking: call it from a worker thread)."""
        assert target.adapter_id is not None and target.storage_key is not None
        try:
            config, tensors = read_adapter_files(self.store, target.storage_key)
        except FileNotFoundError:
            raise model_not_found(target.adapter_id, "Its adapter files are missing from the artifact store.") from None
        return parse_adapter(target.adapter_id, config, tensors, base.model, dtype=base.dtype, device=base.device)

    def _load_for_engine(self, model_id: str, base: LoadedBase) -> LoraAdapter:
        return self.load_adapter(self.catalog.resolve(model_id), base)

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") in ("training_started", "training_ended"):
            self.on_training(event)
            return
        model_id = event.get("model")
        if not isinstance(model_id, str):
            return
        if event.get("event") == "deleted":
            self.catalog.deleted(model_id)
            if self.vllm is not None and self.loop is not None:
                asyncio.run_coroutine_threadsafe(self.vllm.forget(model_id), self.loop)
            for base in list(self.pool.loaded.values()):
                base.engine.forget(model_id)
            log.info("adapter %s deleted: unloaded", model_id)
        elif event.get("event") == "published" and all(event.get(k) for k in ("base_model", "storage_key",
                                                                               "tenant_id")):
            # Without its tenant an adapter could not be checked per request; such a message is left to the
            # Postgres look-up of the first request.
            target = self.catalog.published(model_id, event["base_model"], event["storage_key"], event["tenant_id"])
            log.info("adapter %s published: available", model_id)
            if target.base_model in self.settings.base_models:
                threading.Thread(target=self.preload, args=(target,), name="serve-preload", daemon=True).start()

    def on_training(self, event: dict[str, Any]) -> None:
        """A training process started or ended: only one on this host and this serve's device concerns it. Under the
        vLLM backend this concerns the built-in engine's base models (those loaded for adapters vLLM cannot run);
        vLLM manages its own memory."""
        if event.get("host") != socket.gethostname() \
                or event.get("device") != device_key(self.pool.device) or not isinstance(event.get("job"), str):
            return
        if event["event"] == "training_started":
            self.pool.yield_to_training(event["job"])
        else:
            threading.Thread(target=self.pool.training_ended, args=(event["job"],), name="serve-reload",
                             daemon=True).start()

    def preload(self, target: Target) -> None:
        """A new adapter is likely asked for soon: load its base model if it fits without unloading another, and
        put the adapter into a free slot, so that its first request starts at once. Never evicts anything.
        Under the vLLM backend only an adapter vLLM cannot run is preloaded, into the built-in engine that will
        answer it; vLLM loads the others on their first request. Nothing is preloaded while a training process
        holds serve's device (yield_to_training): a request still loads what it needs."""
        if self.pool.training:
            log.info("did not preload %s: a training process holds this device", target.adapter_id)
            return
        try:
            if self.vllm is not None and self.vllm.engine_for(target) != "builtin":
                return
            base = self.pool.get(target.base_model, evict=False)
            adapter = self.load_adapter(target, base)
        except Exception as exc:
            log.info("did not preload %s: %s", target.adapter_id, exc)
            return
        bank = base.engine.bank

        def warm() -> None:
            if adapter.model_id not in bank and len(bank.slots) < bank.capacity:
                bank.load(adapter)

        base.engine.call(warm)


class ModelEvents(threading.Thread):
    """Subscribes to tunequeue:models, reconnecting after Redis outages (Postgres covers what it misses)."""

    def __init__(self, url: str, handler: Any) -> None:
        super().__init__(name="serve-model-events", daemon=True)
        self.url = url
        self.handler = handler
        self.ready = threading.Event()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                client = sync_redis(self.url, timeout=10)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                channel = models_channel(client)
                pubsub.subscribe(channel)
                self.ready.set()
                while not self._stop_event.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        try:
                            self.handler(json.loads(message["data"]))
                        except Exception:
                            log.exception("bad message on %s: %r", channel, message.get("data"))
                pubsub.close()
                client.close()
            except Exception as exc:
                self.ready.clear()
                log.warning("listening on the models channel failed (%s); retrying", exc)
                self._stop_event.wait(2)
