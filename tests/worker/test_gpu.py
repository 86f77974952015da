"""The NVML sampler against a stand-in for the NVML library (this machine has no GPU), including NVML raising,
and against the real library under the `gpu` mark."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.nvml import MIB, Card, StandInNVML
from worker.gpu import GpuSampler, process_tree_pids, process_tree_rss_mb, visible_devices


def two_cards() -> list[Card]:
    return [Card("GPU-aaaa-0000", procs=[(4242, 3000 * MIB), (9999, 100 * MIB)]),
            Card("GPU-bbbb-1111", used_mb=5, util=0, power_mw=None)]


def test_samples_every_card_with_the_job_processes_memory() -> None:
    nvml = StandInNVML(two_cards())
    sampler = GpuSampler(nvml, cuda_visible_devices=None)
    gpus = sampler.sample({4242})
    assert [g["index"] for g in gpus] == [0, 1]
    first = gpus[0]
    assert first == {"index": 0, "name": "Stand-in H100", "uuid": "GPU-aaaa-0000", "memory_used_mb": 1000.0,
                     "memory_total_mb": 80000.0, "memory_free_mb": 79000.0, "utilization_pct": 42.0,
                     "temperature_c": 55.0, "power_w": 250.0, "process_memory_mb": 3000.0}
    assert gpus[1]["power_w"] is None, "an unsupported metric is None, not an error"
    assert gpus[1]["process_memory_mb"] is None, "the job holds nothing on card 1"
    assert sampler.sample()[0]["process_memory_mb"] is None  # no job: nothing to attribute
    sampler.sample()
    assert nvml.initialised == 1, "NVML is initialised once, not per sample"
    sampler.close()
    assert nvml.calls[-1] == "shutdown" and sampler.sample() == []


def test_no_driver_means_no_gpus_and_no_error() -> None:
    nvml = StandInNVML([], init_error="NVML Shared Library Not Found")
    sampler = GpuSampler(nvml, cuda_visible_devices=None)
    assert sampler.sample({os.getpid()}) == [] and sampler.available is False
    assert "Library Not Found" in (sampler.unavailable_reason or "")
    sampler.sample()
    assert nvml.calls.count("init") == 1, "a missing driver is not retried every two seconds"


def test_a_card_that_stops_answering_is_reported_not_raised() -> None:
    cards = two_cards()
    sampler = GpuSampler(StandInNVML(cards), cuda_visible_devices=None)
    assert "error" not in sampler.sample()[0]
    cards[0].lost = True
    gpus = sampler.sample({4242})
    assert gpus[0]["index"] == 0 and "GPU is lost" in gpus[0]["error"] and "memory_used_mb" not in gpus[0]
    assert gpus[1]["memory_used_mb"] == 5.0, "the other card is still sampled"


def test_a_process_nvml_cannot_attribute_memory_to_is_unknown() -> None:
    cards = [Card("GPU-cccc", procs=[(4242, None)])]  # e.g. a container where NVML gives no per-process numbers
    assert GpuSampler(StandInNVML(cards), cuda_visible_devices=None).sample({4242})[0]["process_memory_mb"] is None


@pytest.mark.parametrize(("visible", "indices"), [
    (None, [0, 1]), ("1", [1]), ("1,0", [1, 0]), ("GPU-bbbb", [1]), ("GPU-aaaa-0000,7", [0]),
    ("", []), ("-1", []), ("0,-1,1", [0]),
])
def test_cuda_visible_devices_picks_the_cards(visible: str | None, indices: list[int]) -> None:
    sampler = GpuSampler(StandInNVML(two_cards()), cuda_visible_devices=visible)
    assert [g["index"] for g in sampler.sample()] == indices
    assert sampler.indices() == indices


def test_visible_devices_parsing() -> None:
    assert visible_devices(None) is None
    assert visible_devices(" 0, 2 ") == ["0", "2"]


def test_process_tree_memory_and_pids() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree_pids(os.getpid())
        ours, alone = process_tree_rss_mb(os.getpid()), process_tree_rss_mb(child.pid)
        assert ours is not None and alone is not None and ours > alone > 0, "the tree counts the child too"
    finally:
        child.kill()
        child.wait()
    assert process_tree_rss_mb(child.pid) is None and process_tree_pids(None) == set()


def _real_nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return count > 0
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_nvml_works(), reason="needs an NVIDIA driver and a GPU (NVML)")
def test_real_nvml_reports_the_cards_and_our_memory() -> None:
    import torch

    sampler = GpuSampler(cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    block = torch.empty(256 * MIB, dtype=torch.uint8, device="cuda")  # 256 MiB that this process holds
    try:
        gpus = sampler.sample({os.getpid()})
        assert gpus and all("error" not in g for g in gpus)
        for gpu in gpus:
            assert 0 < gpu["memory_used_mb"] <= gpu["memory_total_mb"]
            assert gpu["uuid"].startswith(("GPU-", "MIG-")) and 0 <= gpu["utilization_pct"] <= 100
            if gpu["uuid"].startswith("GPU-"):  # a whole card reports its temperature; a MIG slice may not
                assert gpu["temperature_c"] is not None and 0 < gpu["temperature_c"] < 120
        own = [g["process_memory_mb"] for g in gpus if g["process_memory_mb"] is not None]
        # Inside a container NVML may list host pids only; where it can attribute memory it must see the block.
        assert not own or max(own) >= 256
    finally:
        del block
        torch.cuda.empty_cache()
        sampler.close()
