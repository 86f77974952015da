"""A job of two devices (`resources.devices: 2`) as the worker runs it: `worker/runner.py` `_spawn` starts torchrun
with two CPU ranks over gloo (worker/launch.py), and the test reads the protocol on its stdout as the parent does.

- Two ranks train the same numbers as one device with the same global batch: batch_size 4 is 2 rows × 2
  accumulation steps on one device and 2 rows × 1 step × 2 ranks on two, so every optimizer step sees the same four
  rows, the same token-mean loss and (after DDP's all-reduce) the same gradient. What can differ is the order of
  fp32 additions (the all-reduce sums two partial gradients where one device accumulated them in place; the
  full-forward path of a distributed run projects every position where one device projects only the scored ones),
  which is rounding: ~1e-7 relative. Tolerance 1e-4 relative per step, for the loss and the gradient norm, and
  1e-4 absolute on the published adapter weights — a thousand times the rounding, and a hundred times below what
  a real mistake does (a loss scaled by the ranks, a different batch, unsynchronised gradients: > 1e-2 by step 2).
- Rank 0 alone reports: one event per step, one result; the first log event says how many ranks ran.
- Every rank stops: SIGUSR1 to the child's process group (preempt, pause, shutdown) makes both ranks checkpoint at
  the same step and exit, the checkpoint holding both ranks' RNG states; SIGKILL of the group kills torchrun only
  (its ranks run in sessions of their own), and the ranks die with it (PR_SET_PDEATHSIG). A rank killed alone (the
  out-of-memory killer) ends the other too, and torchrun's log names it: the worker requeues such a job as it does
  a single child killed by a signal (worker/runner.py `_killed_by`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from common.settings import get_settings
from tests.support.training import fixed_reply_rows
from tests.support.waiting import wait_until
from worker import capabilities
from worker.launch import killed_rank
from worker.runner import _spawn, _stop_child
from worker.train.protocol import EVENT_PREFIX

pytestmark = pytest.mark.slow
RELATIVE_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def cpu_ranks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ranks run on the CPU over gloo, also on a host with GPUs (`gpu` tests excepted): no GPU visible to the
    worker code that launches them (its GPU list is cached per process) nor to the children, which inherit
    CUDA_VISIBLE_DEVICES through `_spawn`."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    capabilities._gpus.cache_clear()
    yield
    capabilities._gpus.cache_clear()


class Child:
    """The training child started as the worker starts it, its events read as they come."""

    def __init__(self, job_dir: Path, ranks: int) -> None:
        self.job_dir = job_dir
        self.proc = _spawn(job_dir, get_settings(), None, ranks)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(EVENT_PREFIX):
                self.events.append(json.loads(line[len(EVENT_PREFIX):]))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    def log(self) -> str:
        return (self.job_dir / "child.log").read_text(errors="replace")[-3000:]


def ranks_of(torchrun: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(torchrun)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped yet
    except FileNotFoundError:
        return False


def two_rank_job(write_job: Any, tiny_model_dir: Path, job_dir: Path, devices: int, **hp: Any) -> Path:
    return write_job(job_dir, tiny_model_dir, fixed_reply_rows(32), lora={"dropout": 0.0}, seed=11,
                     spec_extra={"resources": {"devices": devices}},
                     **{"n_epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 2, "lr_scheduler": "constant",
                        "learning_rate": 3e-3, **hp})


def test_two_ranks_train_the_same_losses_and_weights_as_one_device_with_the_same_global_batch(  # type: ignore[no-untyped-def]
        tmp_path, write_job, tiny_model_dir) -> None:
    runs = {}
    for devices in (1, 2):
        child = Child(two_rank_job(write_job, tiny_model_dir, tmp_path / f"ranks-{devices}", devices), devices)
        assert child.finish() == 0, child.log()
        runs[devices] = child
    one, two = runs[1], runs[2]
    assert "2 ranks (DDP over gloo)" in two.of("log")[0]["message"] and "2 × 1 × 2 ranks" in two.of("log")[0][
        "message"], two.of("log")[0]
    assert "ranks" not in one.of("log")[0]["message"]
    steps_one, steps_two = one.of("progress"), two.of("progress")
    assert [e["step"] for e in steps_two] == [e["step"] for e in steps_one] == list(range(1, 9)), "rank 0 alone"
    for a, b in zip(steps_one, steps_two, strict=True):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=RELATIVE_TOLERANCE), (key, a, b)
    assert steps_one[-1]["loss"] < steps_one[0]["loss"] - 0.5, "it learned"
    assert len(two.of("result")) == 1 and two.of("result")[0]["trained_tokens"] == one.of("result")[0][
        "trained_tokens"], "every rank's tokens count"
    weights = [load_file(str(run.job_dir / "output" / "adapter" / "adapter_model.safetensors")) for run in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    worst = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    loss_gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(steps_one, steps_two, strict=True))
    print(f"largest step loss difference {loss_gap:.2e}, largest weight difference {worst:.2e}")
    assert worst < WEIGHT_TOLERANCE


def test_sigusr1_makes_every_rank_checkpoint_at_the_same_step_and_stop(tmp_path, write_job, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    job = two_rank_job(write_job, tiny_model_dir, tmp_path / "job", 2, n_epochs=50, save_steps=1000)
    child = Child(job, 2)
    try:
        wait_until(lambda: child.of("progress"), 120, "the first step")
        _stop_child(child.proc, 60, signal.SIGUSR1)  # what the worker does to step aside or pause
        assert child.finish() != 0
    finally:
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGKILL)
    checkpoints = child.of("checkpoint")
    assert len(checkpoints) == 1, (child.events[-3:], child.log())
    folder = Path(checkpoints[0]["path"])
    assert folder.name == f"checkpoint-{checkpoints[0]['step']}"
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= {
        p.name for p in folder.iterdir()}, "both ranks wrote their part before rank 0 reported it"
    assert child.of("log")[-1]["level"] == "warning" and "checkpoint" in child.of("log")[-1]["message"]
    assert not child.of("result")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_every_rank_dies_when_the_childs_process_group_is_stopped(tmp_path, write_job, tiny_model_dir, sig) -> None:  # type: ignore[no-untyped-def]
    job = two_rank_job(write_job, tiny_model_dir, tmp_path / "job", 2, n_epochs=50, save_steps=None)
    child = Child(job, 2)
    try:
        wait_until(lambda: child.of("progress"), 120, "the first step")
        ranks = ranks_of(child.proc.pid)
        assert len(ranks) == 2 and all(alive(pid) for pid in ranks), ranks
        os.killpg(child.proc.pid, sig)  # a cancel (SIGTERM), or the worker's last resort (SIGKILL)
        child.finish(timeout=60)
        wait_until(lambda: not any(alive(pid) for pid in ranks), 30, "both ranks to end with torchrun")
    finally:
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGKILL)
    if sig == signal.SIGTERM:  # a cancel: rank 0 says so, and nothing is published
        assert any("cancel" in e["message"] for e in child.of("log")), (child.events[-3:], child.log())
        assert not child.of("result")


def test_a_rank_killed_alone_ends_the_child_and_torchruns_log_names_it(tmp_path, write_job, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    job = two_rank_job(write_job, tiny_model_dir, tmp_path / "job", 2, n_epochs=50, save_steps=None)
    child = Child(job, 2)
    try:
        wait_until(lambda: child.of("progress"), 120, "the first step")
        ranks = ranks_of(child.proc.pid)
        rank_one = next(pid for pid in ranks if "LOCAL_RANK=1" in _environ(pid))
        os.kill(rank_one, signal.SIGKILL)  # what the host's out-of-memory killer does
        assert child.finish(timeout=120) == 1, "torchrun exits 1 when a rank fails, not -9"
        wait_until(lambda: not any(alive(pid) for pid in ranks), 30, "rank 0 to end too")
    finally:
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGKILL)
    assert killed_rank((job / "child.log").read_text(errors="replace")) == (1, signal.SIGKILL), child.log()
    assert not child.of("error"), "rank 0's broken collective is an echo of rank 1's death, not an error of its own"


def _environ(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as env:
        return env.read().decode(errors="replace").replace("\0", " ")


def _two_gpus() -> bool:
    import torch

    return torch.cuda.device_count() >= 2


@pytest.mark.gpu
@pytest.mark.skipif(not _two_gpus(), reason="needs two CUDA GPUs")
def test_on_two_gpus_a_full_fine_tune_shards_with_fsdp_and_trains_the_same_losses_as_one(  # type: ignore[no-untyped-def]
        tmp_path, write_job, tiny_model_dir) -> None:
    runs = {}
    for devices in (1, 2):
        job = write_job(tmp_path / f"gpus-{devices}", tiny_model_dir, fixed_reply_rows(32), method="full", seed=11,
                        spec_extra={"resources": {"devices": devices}}, n_epochs=1, batch_size=4,
                        gradient_accumulation_steps=2, lr_scheduler="constant", learning_rate=1e-4, precision="fp32")
        child = Child(job, devices)
        assert child.finish() == 0, child.log()
        runs[devices] = child
    assert "2 ranks (FSDP over nccl)" in runs[2].of("log")[0]["message"], runs[2].of("log")[0]
    for a, b in zip(runs[1].of("progress"), runs[2].of("progress"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), (a, b)  # NCCL and TF32 round more than gloo
    weights = [load_file(str(run.job_dir / "output" / "adapter" / "model.safetensors")) for run in runs.values()]
    assert weights[0].keys() == weights[1].keys(), "FSDP's shards are gathered into one whole model"
