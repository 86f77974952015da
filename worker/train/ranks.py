"""A job's ranks (`resources.devices` > 1): the training child runs once per device under torchrun
(`python -m torch.distributed.run --standalone --nproc-per-node N -m worker.train <job_dir>`, worker/launch.py),
and torchrun tells each copy who it is through the environment (RANK, LOCAL_RANK, WORLD_SIZE). transformers'
`Trainer` then trains over gloo (CPU) or NCCL (CUDA): DDP for adapter methods, and for full and freeze fine-tunes
FSDP (FSDP2, accelerate's plugin) on CUDA, DDP on a CPU (`Ranks.strategy` says why).

What each rank does differently (docs/training.md, "Several devices"):

- rank 0 alone speaks the protocol: progress, logs, checkpoints, the result; the others write no event but an
  error (so that a rank's own failure, e.g. an out-of-memory, reaches the parent) and save nothing published;
- every rank dies with torchrun (`die_with_parent`): torchrun starts each rank in its own session, so the worker's
  SIGKILL of the child's process group reaches torchrun only;
- the ranks agree at every step boundary whether to stop or to checkpoint and stop (`agree`): a cancel or a
  preemption signal reaches them at slightly different moments, and a rank that stopped alone would leave the
  others waiting in a collective.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's ranks (torchrun's environment; one rank without it)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")),
                   world_size=int(env.get("WORLD_SIZE", "1")))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def reports(self) -> bool:
        """Whether this rank speaks the protocol (rank 0)."""
        return self.rank == 0

    def bind_device(self) -> None:
        """On CUDA, make this rank's GPU (LOCAL_RANK of the ones torchrun's ranks see) the current device before
        anything loads: the reference pass and a quantized base load on the current device, before the Trainer
        would set it."""
        import torch

        if self.distributed and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)

    @staticmethod
    def backend(cuda: bool) -> str:
        return "nccl" if cuda else "gloo"

    @staticmethod
    def strategy(method: str, cuda: bool) -> str:
        """DDP for adapter methods (every rank holds the frozen base and a small adapter: little to shard). FSDP for
        full and freeze on CUDA, whose trained weights, gradients and optimizer states are then sharded over the
        GPUs. On a CPU full and freeze use DDP too: accelerate (which the Trainer trains through) applies its FSDP
        plugin to GPU-type process groups only, and a gloo group of CPU ranks trains with DDP whatever the plugin
        says; the ranks share one host's memory anyway."""
        from common.schemas.job_spec import ADAPTER_METHODS

        return "fsdp" if cuda and method not in ADAPTER_METHODS else "ddp"

    def describe(self, method: str, cuda: bool) -> str:
        """E.g. "2 ranks (DDP over gloo)", for the first log event."""
        return f"{self.world_size} ranks ({self.strategy(method, cuda).upper()} over {self.backend(cuda)})"


def die_with_parent() -> None:
    """A rank started by torchrun: the kernel SIGKILLs it when torchrun dies (killed with the worker's process
    group, or with the worker itself). If torchrun is already gone, exit now."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the lease and the reaper still recover the job
        return
    if os.getppid() != parent:
        sys.exit(1)


def agree(flags: list[bool], device: object) -> list[bool]:
    """The ranks' flags OR-ed together (one all-reduce of a few numbers): every rank then takes the same decision
    at this step boundary. One rank: the flags themselves."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flags
    values = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)  # type: ignore[arg-type]
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def world_size() -> int:
    """The ranks of the process group this process belongs to (1 outside torchrun)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
