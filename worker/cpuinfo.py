"""This host's CPU and memory, and this process's peak memory, as Linux reports them (/proc), without torch: read
by the worker parent for placement (worker/capabilities.py) and by the training child for its precision
(worker/train/runtime.py) and its peak (worker/train/callbacks.py, reporter.py)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux); None where that cannot be read."""
    text = _cpuinfo()
    if text is None:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags) if flags else None


def cpu_name() -> str:
    for line in (_cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


def host_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemTotal")


def peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM, the high-water mark of its own memory map. Not `ru_maxrss`, which
    Linux carries over an exec from the process that forked it: a training child started by a 1 GiB pytest or
    worker process would report at least that."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # elsewhere: bytes on macOS, KiB on Linux
    return int(peak if sys.platform == "darwin" else peak * 1024)
