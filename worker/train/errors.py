"""Failures of a training attempt, as the codes a program can act on (docs/architecture.md, "A job's path")."""

from __future__ import annotations

from dataclasses import dataclass

from worker.train.protocol import CUDA_OOM, TRAINING_ERROR


class TrainingError(Exception):
    """A failure with a code, a message that says how to fix it, and the spec field it concerns."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class TrainingCancelled(Exception):
    """SIGTERM arrived; training stopped at a step boundary and no adapter was written."""

    def __init__(self, step: int, total_steps: int | None) -> None:
        of = f" of {total_steps}" if total_steps else ""
        super().__init__(f"cancelled at step {step}{of}; no adapter was saved")
        self.step = step


class TrainingPreempted(Exception):
    """SIGUSR1 arrived (the worker is shutting down); a checkpoint was saved at a step boundary."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        where = f"; checkpoint {checkpoint}" if checkpoint else "; no checkpoint could be saved"
        super().__init__(f"preempted at step {step}{where}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    param: str | None = None


def _is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the worker
        return False
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def describe_failure(exc: BaseException) -> Failure:
    """Turn any exception from `train()` into the error event's code, message and param."""
    if isinstance(exc, TrainingError):
        return Failure(exc.code, exc.message, exc.param)
    if _is_cuda_oom(exc):
        return Failure(
            CUDA_OOM,
            "The GPU ran out of memory while training. Lower hyperparameters.batch_size (or raise "
            "gradient_accumulation_steps) or hyperparameters.max_seq_length, set gradient_checkpointing to true, "
            "or use method.type 'qlora'.",
            "hyperparameters.batch_size",
        )
    text = str(exc).strip() or "(no message)"
    return Failure(
        TRAINING_ERROR,
        f"Training failed with {type(exc).__name__}: {text}. Retrying will not help if the same data and spec "
        "fail again; the worker log holds the full traceback for whoever runs this service.",
    )
