"""LoRA adapters served side by side: one base model, many adapters, one forward pass per decode step.

PEFT's own mixed-adapter batches (`adapter_names=`) loop over the distinct adapters of a batch in every LoRA
layer; with 8 adapters that costs about three times a single adapter's forward on CPU (see docs/benchmarks.md).
Here each target `nn.Linear` gets one forward hook and a bank of stacked weights: A as (slots, in, r), B as
(slots, r, out) with the scaling folded in, slot 0 all zeros for "no adapter". A step gathers each row's slot
and adds `bmm(bmm(x, A[slot]), B[slot])` — the same few ops whether the batch holds one adapter or thirty
(punica/S-LoRA's "BGMV", done with stock torch ops). DoRA adapters mix in too: their per-row magnitude scale
`m / ||W + s·BA||` is computed once at load; `base + (g-1)·Wx + g·s·BAx` is PEFT's DoRA forward with g = 1 for
plain LoRA rows. Adapters are parsed from their PEFT files (adapter_config.json + adapter_model.safetensors);
tests/serve checks the outputs against PEFT itself.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from common.adapter_support import serving_problems
from common.artifacts import ArtifactStore
from common.errors import TuneQueueError

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|"
                  r"lora_magnitude_vector(?:\.weight)?)$")


class UnsupportedAdapter(TuneQueueError):
    status_code = 400
    type = "invalid_request_error"
    code = "unsupported_adapter"


@dataclass
class ModuleLora:
    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r), scaling folded in
    magnitude_scale: torch.Tensor | None = None  # DoRA: m / ||W + s·BA|| per output row


@dataclass
class LoraAdapter:
    model_id: str
    modules: dict[str, ModuleLora]
    rank: int
    dora: bool = False
    nbytes: int = field(default=0)


def read_adapter_files(store: ArtifactStore, storage_key: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with store.open(f"{storage_key}/adapter_config.json") as fh:
        config = json.loads(fh.read())
    with store.open(f"{storage_key}/adapter_model.safetensors") as fh:
        tensors = load_safetensors(fh.read())
    return config, tensors


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT's rule (peft.utils.other.get_pattern_key): a pattern matches the end of the module's dotted name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def parse_adapter(model_id: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                  *, dtype: torch.dtype, device: torch.device | str) -> LoraAdapter:
    """Check that the adapter fits `model` and turn it into per-module (A, s·B[, DoRA scale]) on `device`."""
    reasons = serving_problems(config)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            reasons.append(f"weight {key!r} is not a LoRA A/B matrix (embedding LoRA and extra modules are not served)")
            break
        parts.setdefault(match["module"], {})[match["part"].split(".")[0]] = tensor
    if reasons:
        raise UnsupportedAdapter(f"{model_id} cannot be served: {'; '.join(reasons)}", param="model")
    if not parts:
        raise UnsupportedAdapter(f"{model_id} has no LoRA weights", param="model")
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rslora = bool(config.get("use_rslora"))
    modules: dict[str, ModuleLora] = {}
    nbytes = 0
    for name, part in parts.items():
        if "lora_A" not in part or "lora_B" not in part:
            raise UnsupportedAdapter(f"{model_id}: module {name} lacks lora_A or lora_B", param="model")
        try:
            target = model.get_submodule(name)
        except AttributeError:
            raise UnsupportedAdapter(f"{model_id} targets {name}, which the base model does not have: it was "
                                     "trained on another base model", param="model") from None
        if not isinstance(target, nn.Linear):
            raise UnsupportedAdapter(f"{model_id} targets {name}, a {type(target).__name__}; only Linear layers "
                                     "are served", param="model")
        a, b = part["lora_A"].float(), part["lora_B"].float()
        rank = a.shape[0]
        if a.shape != (rank, target.in_features) or b.shape != (target.out_features, rank):
            raise UnsupportedAdapter(f"{model_id}: {name} has LoRA shapes {tuple(a.shape)}/{tuple(b.shape)}, which do "
                                     f"not fit the base layer ({target.in_features}→{target.out_features}); it was "
                                     "trained on another base model", param="model")
        module_alpha = float(_pattern_value(config.get("alpha_pattern") or {}, name, alpha))
        scaling = module_alpha / (math.sqrt(rank) if rslora else rank)
        b = b * scaling
        scale = None
        if "lora_magnitude_vector" in part:
            weight = target.weight.detach().float().to(b.device)
            norm = torch.linalg.norm(weight + b @ a, dim=1)
            scale = (part["lora_magnitude_vector"].float().to(b.device) / norm).to(device=device, dtype=dtype)
        module = ModuleLora(a=a.to(device=device, dtype=dtype), b=b.to(device=device, dtype=dtype),
                            magnitude_scale=scale)
        nbytes += module.a.numel() * module.a.element_size() * 2
        modules[name] = module
    return LoraAdapter(model_id=model_id, modules=modules, rank=max(m.a.shape[0] for m in modules.values()),
                       dora=any(m.magnitude_scale is not None for m in modules.values()), nbytes=nbytes)


class _ModuleBank:
    """Stacked weights of one target Linear, and the forward hook that applies each row's slot."""

    def __init__(self, bank: LoraBank, layer: nn.Linear) -> None:
        self.bank = bank
        self.layer = layer
        self.at: torch.Tensor | None = None  # (slots, in, r)
        self.bt: torch.Tensor | None = None  # (slots, r, out)
        self.g: torch.Tensor | None = None  # (slots, out): 1 for plain LoRA rows; only once a DoRA adapter loads
        self.filled: set[int] = set()
        self.dora: set[int] = set()
        self._gathered: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.handle = layer.register_forward_hook(self)

    def _grow(self, slots: int, rank: int) -> None:
        old_slots, old_rank = (0, 0) if self.at is None else (self.at.shape[0], self.at.shape[2])
        slots, rank = max(slots, old_slots), max(rank, old_rank)
        if (slots, rank) == (old_slots, old_rank):
            return
        dtype, device = self.bank.dtype, self.bank.device
        at = torch.zeros(slots, self.layer.in_features, rank, dtype=dtype, device=device)
        bt = torch.zeros(slots, rank, self.layer.out_features, dtype=dtype, device=device)
        if self.at is not None and self.bt is not None:
            at[:old_slots, :, :old_rank] = self.at
            bt[:old_slots, :old_rank, :] = self.bt
        self.at, self.bt = at, bt
        if self.g is not None:
            g = torch.ones(slots, self.layer.out_features, dtype=dtype, device=device)
            g[:old_slots] = self.g
            self.g = g

    def put(self, slot: int, module: ModuleLora, capacity: int) -> None:
        rank = module.a.shape[0]
        size = self.at.shape[0] if self.at is not None else 1
        while size <= slot:
            size *= 2
        self._grow(min(size, capacity), rank)
        assert self.at is not None and self.bt is not None
        self.at[slot].zero_()
        self.bt[slot].zero_()
        self.at[slot, :, :rank] = module.a.T
        self.bt[slot, :rank, :] = module.b.T
        if module.magnitude_scale is not None:
            if self.g is None:
                self.g = torch.ones(self.at.shape[0], self.layer.out_features, dtype=self.bank.dtype,
                                    device=self.bank.device)
            self.g[slot] = module.magnitude_scale
            self.dora.add(slot)
        elif self.g is not None:
            self.g[slot] = 1
            self.dora.discard(slot)
        self.filled.add(slot)

    def clear(self, slot: int) -> None:
        if slot in self.filled and self.at is not None and self.bt is not None:
            self.at[slot].zero_()
            self.bt[slot].zero_()
            if self.g is not None:
                self.g[slot] = 1
        self.filled.discard(slot)
        self.dora.discard(slot)

    def __call__(self, layer: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        bank = self.bank
        if not bank.active or self.at is None or self.bt is None or not (self.filled & bank.batch_slots):
            return None
        x = args[0]
        uniform = bank.uniform
        if uniform is not None:
            x2 = x.reshape(-1, x.shape[-1])
            if uniform not in self.dora:
                return torch.addmm(out.reshape(-1, out.shape[-1]), x2 @ self.at[uniform],
                                   self.bt[uniform]).view(out.shape)
            delta = ((x2 @ self.at[uniform]) @ self.bt[uniform]).view(out.shape)
            return self._dora(out, delta, self.g[uniform] if self.g is not None else None)
        if self._gathered is None or self._gathered[0] != bank.version:
            # Slots this layer never held (its bank is smaller) read as slot 0: no adapter here.
            idx = torch.where(bank.index < self.at.shape[0], bank.index, 0)
            g = self.g[idx].unsqueeze(1) if self.g is not None and self.dora & bank.batch_slots else None
            self._gathered = (bank.version, self.at[idx], self.bt[idx], g)
        _, at, bt, g = self._gathered
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        if g is None:
            return torch.baddbmm(out.reshape(x3.shape[0], -1, out.shape[-1]), torch.bmm(x3, at), bt).view(out.shape)
        delta = torch.bmm(torch.bmm(x3, at), bt).view(out.shape)
        return self._dora(out, delta, g.view(g.shape[0], *([1] * (out.dim() - 2)), g.shape[-1]))

    def _dora(self, out: torch.Tensor, delta: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        if g is None:
            return out + delta
        bias = self.layer.bias
        plain = out - bias if bias is not None else out
        return out + (g - 1) * plain + g * delta


class LoraBank:
    """Up to `capacity` adapters of one base model in device memory, least recently used evicted first.

    Not thread-safe: the engine thread of the base model owns it (loads, evicts and runs forwards)."""

    def __init__(self, model: nn.Module, capacity: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        self.model = model
        self.capacity = capacity
        self.dtype = dtype
        self.device = torch.device(device)
        self.modules: dict[str, _ModuleBank] = {}
        self.slots: OrderedDict[str, int] = OrderedDict()  # model_id → slot, most recently used last
        self.adapters: dict[int, LoraAdapter] = {}
        self.active = False
        self.uniform: int | None = 0
        self.batch_slots: set[int] = set()
        self.index = torch.zeros(0, dtype=torch.long)
        self.version = 0

    def __contains__(self, model_id: str) -> bool:
        return model_id in self.slots

    def slot_of(self, model_id: str) -> int | None:
        slot = self.slots.get(model_id)
        if slot is not None:
            self.slots.move_to_end(model_id)
        return slot

    def load(self, adapter: LoraAdapter, pinned: Iterable[int] = ()) -> int | None:
        """The adapter's slot, loading it (and evicting the least recently used unpinned one) if needed.
        None: every slot holds an adapter that a running sequence uses."""
        slot = self.slot_of(adapter.model_id)
        if slot is not None:
            return slot
        used = set(self.slots.values())
        free = next((s for s in range(1, self.capacity + 1) if s not in used), None)
        if free is None:
            busy = set(pinned)
            victim = next((mid for mid, s in self.slots.items() if s not in busy), None)
            if victim is None:
                return None
            free = self.evict(victim)
        assert free is not None
        for name, module in adapter.modules.items():
            bank = self.modules.get(name)
            if bank is None:
                bank = self.modules[name] = _ModuleBank(self, self.model.get_submodule(name))  # type: ignore[arg-type]
            bank.put(free, module, self.capacity + 1)
        self.slots[adapter.model_id] = free
        self.adapters[free] = adapter
        self.version += 1
        return free

    def evict(self, model_id: str) -> int | None:
        slot = self.slots.pop(model_id, None)
        if slot is None:
            return None
        adapter = self.adapters.pop(slot)
        for name in adapter.modules:
            self.modules[name].clear(slot)
        self.version += 1
        return slot

    def set_batch(self, slots: list[int]) -> None:
        """Route the next forward: row i uses slot slots[i] (0: the base model alone)."""
        distinct = set(slots)
        self.active = bool(distinct - {0})
        self.batch_slots = distinct
        self.uniform = slots[0] if len(distinct) == 1 else None
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        if self.uniform is None and not torch.equal(index.cpu(), self.index.cpu()):
            self.index = index
            self.version += 1

    def close(self) -> None:
        for bank in self.modules.values():
            bank.handle.remove()
        self.modules.clear()
        self.slots.clear()
        self.adapters.clear()
