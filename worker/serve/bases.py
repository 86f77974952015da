"""Base models: each loaded once, on its first request, with its adapter bank and engine thread.

A memory budget decides how many stay: loading one that does not fit unloads the least recently used idle
base models first; when the others are all busy the request is refused with 503 and can be retried. While a
training process holds the same device (announced on tunequeue:models, common/model_events.py), the idle base
models are released to make room for it and loaded again when it ends."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import NotReady, model_not_found
from common.model_cache import get_model_cache
from common.registry import is_s3, local_path
from common.settings import BaseModelEntry, Settings
from worker.gpu import visible_devices
from worker.model_build_lock import MODEL_BUILD_LOCK
from worker.serve.engine import Engine
from worker.serve.lora import LoraAdapter, LoraBank
from worker.serve.text import chat_template

log = logging.getLogger("tunequeue.serve")


@dataclass
class LoadedBase:
    id: str
    model: Any
    tokenizer: Any
    template: str | None
    engine: Engine
    nbytes: int
    context_length: int
    dtype: torch.dtype
    device: torch.device


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)  # type: ignore[no-any-return]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def device_key(device: torch.device) -> str:
    """How a worker names this device in its training announcements: `cpu`, or `cuda:<NVML index>` (a CUDA index
    is an index into CUDA_VISIBLE_DEVICES when that lists NVML indices)."""
    if device.type != "cuda":
        return "cpu"
    index = device.index or 0
    visible = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible and index < len(visible) and visible[index].isdigit():
        return f"cuda:{visible[index]}"
    return f"cuda:{index}"


def default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)


def weight_file_bytes(entry: BaseModelEntry) -> int:
    path = local_path(entry)
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path is not None else 0


def context_length(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else 2048


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


class BasePool:
    def __init__(self, settings: Settings,
                 adapter_loader: Callable[[str, LoadedBase], LoraAdapter]) -> None:
        self.settings = settings
        self.adapter_loader = adapter_loader
        self.device = pick_device(settings.serve_device)
        self.dtype = pick_dtype(settings.serve_dtype, self.device)
        self.budget = settings.serve_memory_mb * 1024 * 1024 if settings.serve_memory_mb else default_budget(
            self.device)
        self.loaded: dict[str, LoadedBase] = {}
        self._lock = threading.Lock()
        self.training: set[str] = set()  # jobs training on this device now (yield_to_training)
        self.released: list[str] = []  # base models released for them, loaded again when they end

    def get(self, base_id: str, *, evict: bool = True) -> LoadedBase:
        """The loaded base model, loading it now if needed (blocking: call it from a worker thread).
        `evict=False`: refuse (NotReady) rather than unload another base model to make room."""
        base = self.loaded.get(base_id)
        if base is not None:
            base.engine.last_used = time.monotonic()
            return base
        with self._lock:
            base = self.loaded.get(base_id)
            if base is None:
                base = self._load(base_id, evict=evict)
                self.loaded[base_id] = base
        return base

    def warm(self) -> None:
        """Import the code every registered local base model needs (transformers imports its model and tokenizer
        classes on first use: seconds), without loading any weights."""
        from transformers import AutoConfig, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        for base_id, entry in self.settings.base_models.items():
            path = local_path(entry)
            if path is None or not (path / "config.json").is_file():
                continue
            try:
                MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]
                AutoTokenizer.from_pretrained(path)
            except Exception as exc:  # the real load reports it properly
                log.info("could not warm up %s: %s", base_id, exc)

    def _make_room(self, need: int, base_id: str, evict: bool) -> None:
        used = sum(b.nbytes for b in self.loaded.values())
        idle = sorted((b for b in self.loaded.values() if not b.engine.busy), key=lambda b: b.engine.last_used)
        if not evict:
            idle = []
        while used + need > self.budget and idle:
            victim = idle.pop(0)
            log.info("unloading base model %s to make room for %s", victim.id, base_id)
            self.unload(victim.id)
            used -= victim.nbytes
        if used + need > self.budget:
            raise NotReady(f"no room to load base model {base_id!r} ({need // 2**20} MiB) within the serve memory "
                           f"budget ({self.budget // 2**20} MiB, TUNEQUEUE_SERVE_MEMORY_MB) while other base models "
                           "are busy; retry shortly", param="model", code="model_overloaded")

    def _load(self, base_id: str, *, evict: bool = True) -> LoadedBase:
        entry = self.settings.base_models.get(base_id)
        if entry is None:
            raise model_not_found(base_id)
        if is_s3(entry):  # fetched into this host's model cache, in use while it loads (then it is in memory)
            try:
                with get_model_cache(self.settings).use(entry.path, name=base_id) as cached:
                    return self._load_entry(base_id, entry.model_copy(update={"path": str(cached.path),
                                                                              "revision": None}), evict)
            except NotReady as exc:
                raise NotReady(exc.message, param="model", code=exc.code) from exc
        return self._load_entry(base_id, entry, evict)

    def _load_entry(self, base_id: str, entry: BaseModelEntry, evict: bool) -> LoadedBase:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = local_path(entry)
        if path is not None and not (path / "config.json").is_file():
            raise NotReady(f"base model {base_id!r} is registered at {path}, which holds no model (run `make up` or "
                           "fix TUNEQUEUE_BASE_MODELS)", param="model", code="base_model_unavailable")
        self._make_room(weight_file_bytes(entry), base_id, evict)
        source = str(path) if path is not None else entry.path
        kw: dict[str, Any] = {"revision": entry.revision, "trust_remote_code": entry.trust_remote_code}
        started = time.monotonic()
        model: Any = None
        out_of_memory = False
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kw)
            with MODEL_BUILD_LOCK:  # the preload and reload threads build too (worker/model_build_lock.py)
                model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype, use_safetensors=True, **kw)
            model = model.to(self.device).eval()  # type: ignore[arg-type]
        except OSError as exc:  # a hub id that is neither cached nor reachable, a folder without weights
            raise NotReady(f"could not load base model {base_id!r} from {source} ({type(exc).__name__}: {exc}); "
                           "check TUNEQUEUE_BASE_MODELS on the serve host", param="model",
                           code="base_model_unavailable") from exc
        except torch.OutOfMemoryError:
            out_of_memory, model = True, None
        if out_of_memory:
            # The budget counts serve's own models only: another process on the device (vLLM beside serve's
            # built-in engine, a training run) can hold memory it assumed free. Out of the except block (its
            # traceback gone) the half-moved model is unreferenced, and its memory can go back.
            self._free_device()
            raise NotReady(f"no device memory to load base model {base_id!r} on {self.device}: another process "
                           "holds it (vLLM: lower its --gpu-memory-utilization; training: retry when it ends); set "
                           "TUNEQUEUE_SERVE_MEMORY_MB to what serve may use", param="model", code="model_overloaded")
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bank = LoraBank(model, self.settings.serve_max_adapters, dtype=self.dtype, device=self.device)
        base = LoadedBase(id=base_id, model=model, tokenizer=tokenizer,
                          template=chat_template(tokenizer, entry.template), engine=None,  # type: ignore[arg-type]
                          nbytes=nbytes, context_length=context_length(model.config, tokenizer), dtype=self.dtype,
                          device=self.device)
        base.engine = Engine(
            base_id, model, tokenizer, bank, max_batch=self.settings.serve_max_batch,
            queue_size=self.settings.serve_queue_size, max_prefill_tokens=self.settings.serve_max_prefill_tokens,
            context_length=base.context_length, eos_ids=eos_ids(model, tokenizer),
            load_adapter=lambda model_id: self.adapter_loader(model_id, base))
        base.engine.start()
        log.info("loaded base model %s from %s in %.1fs (%d MiB, %s, %s)", base_id, source,
                 time.monotonic() - started, nbytes // 2**20, self.device, self.dtype)
        return base

    def unload(self, base_id: str) -> None:
        base = self.loaded.pop(base_id, None)
        if base is None:
            return
        base.engine.stop()
        base.engine.bank.close()
        del base
        self._free_device()

    def _free_device(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def yield_to_training(self, job_id: str) -> list[str]:
        """A training process started on this device: release the idle base models (no request waiting or
        running) to make room for it. Busy ones stay; a request for a released one loads it again on demand.
        Returns the ids released."""
        with self._lock:
            self.training.add(job_id)
            idle = [b.id for b in self.loaded.values() if not b.engine.busy]
            self.released += [b for b in idle if b not in self.released]  # before they go: a reader sees both
            for base_id in idle:
                log.info("releasing idle base model %s: job %s trains on this device", base_id, job_id)
                self.unload(base_id)
            return idle

    def training_ended(self, job_id: str) -> list[str]:
        """A training process on this device ended: once none is left, load the released base models again (in the
        calling thread). Returns the ids loaded."""
        with self._lock:
            self.training.discard(job_id)
            if self.training:
                return []
            again, self.released = self.released, []
        for base_id in again:
            try:
                self.get(base_id, evict=False)
            except Exception as exc:  # loaded on its next request instead
                log.info("did not reload base model %s after training: %s", base_id, exc)
        return again

    def close(self) -> None:
        for base_id in list(self.loaded):
            self.unload(base_id)
