"""A stand-in for the NVML library (pynvml's module API, the slice that worker/gpu.py uses) for tests on machines
without an NVIDIA GPU: cards with memory, utilisation, temperature, power and processes, and NVML's errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

MIB = 1024 * 1024


class NVMLError(Exception):
    """The stand-in's error class (pynvml raises subclasses of its own NVMLError)."""


@dataclass
class Card:
    uuid: str
    used_mb: int = 1000
    total_mb: int = 80_000
    util: int = 42
    temp: int = 55
    power_mw: int | None = 250_000  # None: "not supported", as NVML says on some boards
    procs: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes or None)
    lost: bool = False  # the card fell off the bus: every query raises


class StandInNVML:
    """Just the slice of pynvml's module API that the sampler uses, with the same names and result shapes."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, cards: list[Card], *, init_error: str | None = None) -> None:
        self.cards, self.init_error = cards, init_error
        self.calls: list[str] = []
        self.initialised = 0

    def _card(self, handle: Any) -> Card:
        card = self.cards[handle]
        if card.lost:
            raise NVMLError("GPU is lost")
        return card

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index >= len(self.cards):
            raise NVMLError("Invalid Argument")
        if self.cards[index].lost:
            raise NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        self._card(handle)
        return "Stand-in H100"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._card(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        c = self._card(handle)
        return SimpleNamespace(used=c.used_mb * MIB, total=c.total_mb * MIB, free=(c.total_mb - c.used_mb) * MIB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=self._card(handle).util, memory=10)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._card(handle).temp

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        power = self._card(handle).power_mw
        if power is None:
            raise NVMLError("Not Supported")
        return power

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._card(handle).procs]
