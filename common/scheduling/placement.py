"""Placement by fit: the devices workers registered (`workers`, kept in Postgres across restarts), what a job needs
to run (its peak-memory estimate per device kind, common/memory_estimate.py, and bitsandbytes or flash-attention),
and the decisions made from both:

- at submission (`place`): a job that no registered device of its pool can ever run is refused with 400
  `insufficient_resources`, the estimate and the largest device; when no worker has ever registered in the pool,
  it is accepted and waits, with a warning event;
- at the claim (common/scheduling/claim.py): a worker only weighs the jobs its device can run (`Fit`);
- devices (`resources.devices`, issue 17): a job of N devices runs on one worker that has at least N (its visible
  GPUs, or TUNEQUEUE_WORKER_DEVICES on a CPU worker). A worker runs one job at a time, so all its devices are free
  when it claims. On a GPU each rank holds its own copy of the estimate; on a CPU the ranks share the host's
  memory, so N ranks need N times the CPU estimate within the worker's budget. A job needing more devices than
  any worker of its pool has is refused like any other misfit (400 `insufficient_resources` on
  `resources.devices`);
- `batch_size: "auto"` (worker/runner.py): the largest micro-batch that fits the claiming device, from the same
  estimate, keeping the batch size the job trains with (the rest becomes gradient accumulation).

An adapter job's estimate on a CPU assumes fp32 frozen weights (the larger, for a CPU without bf16 instructions).
The estimate's error against real training is measured by benchmarks/memory_estimate_error.py (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.errors import InvalidRequest
from common.memory_estimate import estimate_training_memory, largest_micro_batch, load_model_config
from common.model_cache import get_model_cache
from common.models import Worker
from common.registry import is_s3, local_path, resolve
from common.schemas.job_spec import ResolvedJobSpec
from common.settings import Settings

GIB = 2**30
EIGHT_BIT_OPTIMIZERS = frozenset({"adamw_8bit", "paged_adamw", "paged_adamw_8bit"})


class InsufficientResources(InvalidRequest):
    code = "insufficient_resources"


@dataclass(frozen=True)
class Device:
    """One device a worker trains on (worker/capabilities.py detects them)."""

    id: str
    host: str
    kind: Literal["cuda", "cpu"]
    device_name: str
    memory_bytes: int
    compute_capability: str | None
    bf16: bool
    bitsandbytes: bool
    flash_attention: bool
    devices: int = 1  # how many devices the worker that has this one trains one job on at most


@dataclass(frozen=True)
class Fit:
    """What the claiming worker's device offers; the claim weighs only the jobs that need no more."""

    kind: str
    memory_bytes: int
    bitsandbytes: bool
    flash_attention: bool
    devices: int = 1  # the worker's devices, all free when it claims (it runs one job at a time)

    @classmethod
    def of(cls, device: Device | Worker) -> Fit:
        return cls(kind=device.kind, memory_bytes=device.memory_bytes, bitsandbytes=device.bitsandbytes,
                   flash_attention=device.flash_attention, devices=device.devices or 1)


@dataclass(frozen=True)
class Needs:
    """What a device must have to run a job: bytes per device kind at the smallest micro-batch it may train with,
    and the libraries; `estimate` is what the job object shows."""

    cuda_bytes: int
    cpu_bytes: int
    bitsandbytes: bool
    flash_attention: bool
    estimate: dict[str, Any]
    devices: int = 1  # resources.devices

    def bytes_on(self, kind: str) -> int:
        """What a worker of this kind must offer: per GPU the estimate (each rank holds a copy), on a CPU the
        estimate times the ranks, which share the host's memory."""
        return self.cuda_bytes if kind == "cuda" else self.cpu_bytes * self.devices

    def columns(self) -> dict[str, Any]:
        """The job's columns that the claim reads (and `needs_devices`, written from the spec even without an
        estimate)."""
        return {"estimate": self.estimate, "needs_cuda_bytes": self.cuda_bytes, "needs_cpu_bytes": self.cpu_bytes,
                "needs_bitsandbytes": self.bitsandbytes, "needs_flash_attention": self.flash_attention}


def register(session: Session, queue: str, devices: list[Device], now: datetime) -> None:
    """Record (or refresh) this worker's devices in its pool."""
    for d in devices:
        values = {"queue": queue, "host": d.host, "kind": d.kind, "device_name": d.device_name,
                  "memory_bytes": d.memory_bytes, "compute_capability": d.compute_capability, "bf16": d.bf16,
                  "bitsandbytes": d.bitsandbytes, "flash_attention": d.flash_attention, "devices": d.devices,
                  "last_seen_at": now}
        session.execute(insert(Worker).values(id=d.id, first_seen_at=now, **values)
                        .on_conflict_do_update(index_elements=[Worker.id], set_=values))


def pool_devices(session: Session, queue: str) -> list[Worker]:
    return list(session.scalars(select(Worker).where(Worker.queue == queue).order_by(Worker.id)))


def batch_size_is_auto(stored: dict[str, Any]) -> bool:
    return stored.get("hyperparameters", {}).get("batch_size", "auto") == "auto"


def _config(settings: Settings, base_model: str) -> dict[str, Any] | None:
    """The base model's config.json: read from its folder on this host, or from the bucket for an s3:// model
    (only that file, kept per source and ETag: common/model_cache.py); None for a hub model (no estimate)."""
    entry = resolve(settings, base_model)
    if is_s3(entry):
        return get_model_cache(settings).remote_config(entry.path)
    path = local_path(entry)
    return _config_at(str(path)) if path is not None else None


_CONFIGS: dict[str, dict[str, Any]] = {}


def _config_at(path: str) -> dict[str, Any] | None:
    """A base model's config.json, read once per process (base models change only with the settings, at a
    restart); a folder without one yet (a model being built) is asked again next time."""
    if path not in _CONFIGS:
        if not (Path(path) / "config.json").is_file():
            return None
        _CONFIGS[path] = load_model_config(path)
    return _CONFIGS[path]


def needs_of(settings: Settings, spec: ResolvedJobSpec, *, auto_batch: bool) -> Needs | None:
    """What the job needs, or None when the base model's config.json cannot be read here (a hub model, or an s3://
    model without a readable one)."""
    config = _config(settings, spec.base_model)
    if config is None:
        return None
    micro = 1 if auto_batch else spec.hyperparameters.micro_batch_size
    estimates = {}
    for kind in ("cuda", "cpu"):
        options: list[bool | None] = [None]
        if kind == "cuda" and spec.hyperparameters.gradient_checkpointing == "auto":
            options.append(True)  # the worker turns it on when activations would not fit
        estimates[kind] = min((estimate_training_memory(config, spec, device=kind, micro_batch_size=micro,
                                                        gradient_checkpointing=gc) for gc in options),
                              key=lambda e: e.total_bytes)
    hp = spec.hyperparameters
    return Needs(cuda_bytes=estimates["cuda"].total_bytes, cpu_bytes=estimates["cpu"].total_bytes,
                 bitsandbytes=spec.method.type == "qlora" or hp.optimizer in EIGHT_BIT_OPTIMIZERS,
                 flash_attention=hp.attention == "flash_attention_2",
                 estimate={kind: e.to_dict() for kind, e in estimates.items()}
                 | {"micro_batch_size": micro, "batch_size_auto": auto_batch, "measured_peak_bytes": None},
                 devices=spec.resources.devices)


def can_run(fit: Fit, needs: Needs) -> bool:
    return needs.devices <= fit.devices and needs.bytes_on(fit.kind) <= fit.memory_bytes \
        and (fit.bitsandbytes or not needs.bitsandbytes) and (fit.flash_attention or not needs.flash_attention)


def place(session: Session, queue: str, needs: Needs | None, devices: int = 1) -> str | None:
    """Refuse a job no registered device of the pool can ever run (400 `insufficient_resources`): too few devices
    on any one worker for its `devices` (resources.devices), or no device that fits its estimate. Returns a warning
    for the job's events when no worker has registered yet, else None."""
    pool = pool_devices(session, queue)
    if needs is None:  # no estimate on this host: only the device count can be checked
        if pool and not any(d.devices >= devices for d in pool):
            raise _too_few_devices(pool, devices)
        return None
    if not pool:
        return (f"No worker has registered in this pool yet: the job waits for one that fits it (estimated peak "
                f"{needs.cuda_bytes / GIB:.1f} GiB on a GPU, {needs.cpu_bytes / GIB:.1f} GiB on a CPU"
                + (f", on {needs.devices} devices of one worker)" if needs.devices > 1 else ")"))
    if any(can_run(Fit.of(d), needs) for d in pool):
        return None
    raise _refusal(pool, needs)


def _too_few_devices(devices: list[Worker], wanted: int) -> InsufficientResources:
    most = max(devices, key=lambda d: (d.devices or 1, d.id))
    return InsufficientResources(
        f"this job needs {wanted} devices on one worker (resources.devices), and the largest worker of this pool "
        f"has {most.devices or 1} ({most.kind}, {most.id}); lower resources.devices to {most.devices or 1} or less "
        "(and keep batch_size a multiple of it), or start a worker with more devices: more GPUs visible to it "
        "(CUDA_VISIBLE_DEVICES), or TUNEQUEUE_WORKER_DEVICES on a CPU worker", param="resources.devices")


def _refusal(devices: list[Worker], needs: Needs) -> InsufficientResources:
    if not any((d.devices or 1) >= needs.devices for d in devices):
        return _too_few_devices(devices, needs.devices)
    devices = [d for d in devices if (d.devices or 1) >= needs.devices]  # the rest cannot run it anyway
    if needs.bitsandbytes and not any(d.bitsandbytes for d in devices):
        return InsufficientResources(
            "no worker of this pool has bitsandbytes on a GPU, which qlora and the 8-bit optimizers need; use "
            "method lora (or dora) and optimizer adamw", param="method.type")
    if needs.flash_attention and not any(d.flash_attention for d in devices):
        return InsufficientResources(
            "no worker of this pool has flash-attention (a GPU of compute capability 8.0 or later with flash_attn "
            "installed); use attention 'auto' or 'sdpa'", param="hyperparameters.attention")
    largest = max(devices, key=lambda d: d.memory_bytes)
    need = needs.bytes_on(largest.kind)
    ranks = f" ({needs.devices} ranks sharing the host's memory)" if largest.kind == "cpu" and needs.devices > 1 \
        else ""
    return InsufficientResources(
        f"this job needs an estimated {need / GIB:.1f} GiB at its smallest micro-batch on a {largest.kind} "
        f"device{ranks}, "
        f"and the largest worker of this pool has {largest.memory_bytes / GIB:.1f} GiB ({largest.device_name}, "
        f"{largest.id}); lower max_seq_length or batch_size, set gradient_checkpointing true, or use qlora "
        "(POST /jobs/estimate shows the estimate's parts)", param="hyperparameters")


def auto_micro_batch(settings: Settings, spec: ResolvedJobSpec, device: Device) -> tuple[int, int] | None:
    """For `batch_size: "auto"`: (micro-batch, accumulation steps) with the largest micro-batch that fits the
    device and divides the batch size the job trains with; None when the estimate cannot be made."""
    config = _config(settings, spec.base_model)
    if config is None:
        return None
    batch = spec.hyperparameters.batch_size
    ranks = spec.resources.devices
    budget = device.memory_bytes // ranks if device.kind == "cpu" else device.memory_bytes  # CPU ranks share it
    largest = largest_micro_batch(config, spec, device=device.kind, budget_bytes=budget, limit=batch,
                                  cpu_bf16=device.kind == "cpu" and device.bf16, cuda_bf16=device.bf16)
    micro = max(m for m in range(1, max(largest, 1) + 1) if batch % m == 0)
    return micro, batch // micro
