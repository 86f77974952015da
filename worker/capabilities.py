"""What this worker's devices can run, for placement by fit (common/scheduling/placement.py): per GPU its name,
memory, compute capability, bf16, and whether bitsandbytes and flash-attention work there; on a host without a
GPU, one CPU device with the memory budget training may use (TUNEQUEUE_CPU_MEMORY_BUDGET_MB, default 80% of the
host's memory) and whether the CPU has bf16 instructions. Every device also carries how many devices this worker
trains one job on (`resources.devices`): the visible GPUs (CUDA_VISIBLE_DEVICES), or on a CPU worker
TUNEQUEUE_WORKER_DEVICES (default 1), whose ranks then share the host's CPU and memory. No CUDA is initialised
(NVML is asked, as for metrics: worker/gpu.py), and no torch is imported: the worker parent stays light."""

from __future__ import annotations

import functools
import importlib.util
import socket

from common import state
from common.db import session_scope
from common.scheduling import placement
from common.scheduling.placement import Device
from common.settings import Settings
from worker.cpuinfo import CPU_BF16_FLAGS, cpu_flags, cpu_name, host_memory_bytes
from worker.gpu import GpuSampler

CPU_SHARE = 0.8  # of the host's memory, a CPU worker's default budget: the OS, the API and serve keep the rest
BF16_COMPUTE_CAPABILITY = (8, 0)  # Ampere and later
FLASH_ATTENTION_COMPUTE_CAPABILITY = (8, 0)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _at_least(capability: str | None, minimum: tuple[int, int]) -> bool:
    if not capability:
        return False
    major, _, minor = capability.partition(".")
    return (int(major), int(minor or 0)) >= minimum


@functools.lru_cache(maxsize=1)
def _gpus() -> tuple[dict[str, object], ...]:
    return tuple(GpuSampler().describe())


def local_devices(settings: Settings) -> list[Device]:
    """The devices this worker may train on, the one its jobs use first."""
    host = socket.gethostname()
    gpus = _gpus()
    if gpus:
        count = len(gpus)
        return [Device(id=f"{host}:{gpu['index']}", host=host, kind="cuda", device_name=str(gpu["name"]),
                       memory_bytes=int(gpu["memory_total_bytes"] or 0),  # type: ignore[call-overload]
                       compute_capability=gpu["compute_capability"],  # type: ignore[arg-type]
                       bf16=_at_least(gpu["compute_capability"], BF16_COMPUTE_CAPABILITY),  # type: ignore[arg-type]
                       bitsandbytes=_installed("bitsandbytes"),
                       flash_attention=_installed("flash_attn") and _at_least(
                           gpu["compute_capability"], FLASH_ATTENTION_COMPUTE_CAPABILITY),  # type: ignore[arg-type]
                       devices=count)
                for gpu in gpus]
    budget = settings.cpu_memory_budget_mb * 2**20 if settings.cpu_memory_budget_mb else \
        int(host_memory_bytes() * CPU_SHARE)
    flags = cpu_flags() or frozenset()
    return [Device(id=f"{host}:cpu", host=host, kind="cpu", device_name=cpu_name(), memory_bytes=budget,
                   compute_capability=None, bf16=bool(flags & CPU_BF16_FLAGS), bitsandbytes=False,
                   flash_attention=False, devices=settings.worker_devices)]


def register_local_devices(settings: Settings) -> list[Device]:
    """Record this worker's devices in its pool (Postgres): at start-up, so that placement knows them before the
    first claim, and again at every claim, which moves `last_seen_at`."""
    devices = local_devices(settings)
    with session_scope() as session:
        placement.register(session, settings.celery_queue, devices, state.now())
    return devices
