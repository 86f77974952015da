"""The training child's command line: `python -m worker.train <job_dir>` for a job of one device, and for a job of
N > 1 (`resources.devices`) the same module under torchrun, one rank per device:

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N \\
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout S -m worker.train <job_dir>

torchrun is the child the worker supervises (worker/runner.py `_spawn`): it forwards the worker's SIGTERM (cancel)
and SIGUSR1 (checkpoint and stop) to every rank, waits S seconds for them, then SIGKILLs them; it exits non-zero
when a rank fails (and stops the others). Each rank runs in a session of its own and dies with torchrun
(worker/train/ranks.py `die_with_parent`), which itself dies with the worker. On a GPU worker the ranks get the
first N of the worker's GPUs (CUDA_VISIBLE_DEVICES); on a CPU worker they share the host (gloo), one thread each
unless OMP_NUM_THREADS says otherwise (torchrun's default).
"""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"  # SIGUSR1: checkpoint and stop (preempt, pause, shutdown)
# torchrun's log line for the first rank that failed, e.g. "failed (exitcode: -9) local_rank: 1 (pid: 123) of …"
_RANK_FAILED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")


def child_command(python: str, job_dir: Path, ranks: int, *, grace_seconds: float) -> list[str]:
    """The argv of the training child; `grace_seconds`: how long torchrun lets the ranks finish after a signal
    (the worker's own grace before it SIGKILLs torchrun)."""
    if ranks <= 1:
        return [python, "-m", "worker.train", str(job_dir)]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(ranks),
            "--signals-to-handle", TORCHRUN_SIGNALS, "--shutdown-timeout", str(max(1, math.ceil(grace_seconds))),
            "-m", "worker.train", str(job_dir)]


def rank_environment(env: dict[str, str], ranks: int, gpus: int) -> dict[str, str]:
    """`env` for a job of `ranks` devices on a worker with `gpus` GPUs: the ranks take the first `ranks` of them
    (the worker runs one job at a time, so which ones does not matter), named as the worker's own
    CUDA_VISIBLE_DEVICES names them, or by CUDA's numbering when it is unset."""
    if ranks <= 1 or gpus <= ranks:
        return env
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    chosen = visible[:ranks] if visible else [str(i) for i in range(ranks)]
    return {**env, "CUDA_VISIBLE_DEVICES": ",".join(chosen)}


def killed_rank(child_log: str) -> tuple[int, signal.Signals] | None:
    """(local rank, signal) when torchrun's log (the child's stderr) says the first rank to fail was killed by a
    signal (the host's out-of-memory killer, an operator): torchrun itself then exits 1, not -signal as a single
    child would, and no rank wrote an error event."""
    found = _RANK_FAILED.search(child_log)
    if found is None or int(found[1]) >= 0:
        return None
    try:
        return int(found[2]), signal.Signals(-int(found[1]))
    except ValueError:
        return None
