"""GPU metrics through NVML (`pynvml`, from the nvidia-ml-py package), and the memory of a process tree.

`GpuSampler` never raises: a host without an NVIDIA driver samples as `[]`, a metric a card does not support
(power on some boards, per-process memory inside some containers) is `None`, and a card that stops answering
is reported with an `error` instead of numbers. NVML is asked for, never CUDA: the worker parent must not
initialise CUDA (docs/architecture.md, "Processes"), and NVML sees every card regardless of `CUDA_VISIBLE_DEVICES`.

The NVML module is injectable so that tests can stand in for the library on a machine without a GPU.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from typing import Any

log = logging.getLogger("tunequeue.worker")

MIB = 1024 * 1024
_UNSET: Any = object()


def visible_devices(value: str | None) -> list[str] | None:
    """`CUDA_VISIBLE_DEVICES` as a list of entries (indices or UUIDs); None when unset (every card)."""
    if value is None:
        return None
    entries = [v.strip() for v in value.split(",")]
    out: list[str] = []
    for entry in entries:
        if not entry or entry.startswith("-"):
            break  # CUDA stops at the first invalid entry; "-1" or "" hides every card
        out.append(entry)
    return out


class GpuSampler:
    """Samples every GPU this worker may use. Thread-safe; NVML is initialised on the first sample."""

    def __init__(self, nvml: Any = None, cuda_visible_devices: str | None = _UNSET) -> None:
        self._nvml = nvml
        self._visible = visible_devices(
            os.environ.get("CUDA_VISIBLE_DEVICES") if cuda_visible_devices is _UNSET else cuda_visible_devices)
        self._lock = threading.Lock()
        self._state = "new"  # new → ready | unavailable; closed after close()
        self._indices: list[int] = []
        self.unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        with self._lock:
            self._ensure_init()
            return self._state == "ready"

    def _ensure_init(self) -> None:
        if self._state != "new":
            return
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = int(self._nvml.nvmlDeviceGetCount())
            self._indices = self._select(count)
            self._state = "ready"
        except Exception as exc:  # no driver, no library, no permission: a host without GPUs
            self._state = "unavailable"
            self.unavailable_reason = f"{type(exc).__name__}: {exc}"
            log.info("GPU metrics unavailable (%s); reporting gpus: []", self.unavailable_reason)

    def _select(self, count: int) -> list[int]:
        if self._visible is None:
            return list(range(count))
        chosen: list[int] = []
        for entry in self._visible:
            if entry.isdigit():
                if int(entry) < count:
                    chosen.append(int(entry))
                continue
            for index in range(count):  # a UUID (or a unique prefix of one), as CUDA accepts
                uuid = self._call("nvmlDeviceGetUUID", self._call("nvmlDeviceGetHandleByIndex", index))
                if isinstance(uuid, bytes):
                    uuid = uuid.decode()
                if uuid and (uuid == entry or uuid.startswith(entry)):
                    chosen.append(index)
                    break
        return list(dict.fromkeys(chosen))

    def _handle(self, index: int) -> Any:
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def _call(self, name: str, *args: Any) -> Any:
        """One NVML query; a failure (unsupported, lost card, anything) is None."""
        try:
            return getattr(self._nvml, name)(*args)
        except Exception:
            return None

    def indices(self) -> list[int]:
        with self._lock:
            self._ensure_init()
            return list(self._indices) if self._state == "ready" else []

    def describe(self) -> list[dict[str, Any]]:
        """What each GPU this worker may use is, for placement: index, name, total memory (bytes) and CUDA compute
        capability ("8.0"), each None where NVML cannot tell."""
        with self._lock:
            self._ensure_init()
            if self._state != "ready":
                return []
            out = []
            for index in self._indices:
                handle = self._call("nvmlDeviceGetHandleByIndex", index)
                name = self._call("nvmlDeviceGetName", handle)
                memory = self._call("nvmlDeviceGetMemoryInfo", handle)
                capability = self._call("nvmlDeviceGetCudaComputeCapability", handle)
                out.append({"index": index, "name": name.decode() if isinstance(name, bytes) else name,
                            "memory_total_bytes": getattr(memory, "total", None),
                            "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None})
            return out

    def sample(self, pids: Collection[int] = ()) -> list[dict[str, Any]]:
        """One dict per GPU: index, uuid, name, memory used/total/free (MiB), utilization (%), temperature (°C),
        power (W) and `process_memory_mb`, the memory that `pids` hold on it (None when NVML can't tell)."""
        with self._lock:
            self._ensure_init()
            if self._state != "ready":
                return []
            return [self._sample_one(index, set(pids)) for index in self._indices]

    def _sample_one(self, index: int, pids: set[int]) -> dict[str, Any]:
        gpu: dict[str, Any] = {"index": index}
        try:
            handle = self._handle(index)
        except Exception as exc:  # the card fell off the bus, the driver is being reloaded, …
            gpu["error"] = f"{type(exc).__name__}: {exc}"
            return gpu
        name = self._call("nvmlDeviceGetName", handle)
        uuid = self._call("nvmlDeviceGetUUID", handle)
        gpu["name"] = name.decode() if isinstance(name, bytes) else name
        gpu["uuid"] = uuid.decode() if isinstance(uuid, bytes) else uuid
        memory = self._call("nvmlDeviceGetMemoryInfo", handle)
        gpu["memory_used_mb"] = _mib(getattr(memory, "used", None))
        gpu["memory_total_mb"] = _mib(getattr(memory, "total", None))
        gpu["memory_free_mb"] = _mib(getattr(memory, "free", None))
        rates = self._call("nvmlDeviceGetUtilizationRates", handle)
        gpu["utilization_pct"] = _num(getattr(rates, "gpu", None))
        temperature_sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        gpu["temperature_c"] = _num(self._call("nvmlDeviceGetTemperature", handle, temperature_sensor))
        milliwatts = _num(self._call("nvmlDeviceGetPowerUsage", handle))
        gpu["power_w"] = round(milliwatts / 1000, 1) if milliwatts is not None else None
        gpu["process_memory_mb"] = self._process_memory(handle, pids) if pids else None
        if memory is None and rates is None:
            gpu["error"] = "NVML did not answer for this GPU"
        return gpu

    def _process_memory(self, handle: Any, pids: set[int]) -> float | None:
        procs = self._call("nvmlDeviceGetComputeRunningProcesses", handle)
        if procs is None:
            return None
        used = [getattr(p, "usedGpuMemory", None) for p in procs if getattr(p, "pid", None) in pids]
        if not used or any(u is None for u in used):
            # Not on this card yet, or NVML can't attribute memory here: inside a container NVML lists host
            # pids, and under MIG it gives no per-process numbers. Unknown beats a wrong zero.
            return None
        return _mib(sum(used))

    def close(self) -> None:
        with self._lock:
            if self._state == "ready":
                self._call("nvmlShutdown")
            self._state = "closed"


def _mib(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return round(float(value) / MIB, 1)
    except (TypeError, ValueError):
        return None


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def process_tree_rss_mb(pid: int | None) -> float | None:
    """Resident memory of `pid` and its descendants (MiB); None when the process is gone."""
    if pid is None:
        return None
    import psutil  # a dependency of accelerate, which training needs anyway

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return round(total / MIB, 1)


def host_memory_available_mb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().available / MIB, 1)
    except Exception:
        return None


def process_tree_pids(pid: int | None) -> set[int]:
    if pid is None:
        return set()
    import psutil

    try:
        root = psutil.Process(pid)
        return {pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.Error:
        return {pid}
