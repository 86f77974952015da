"""How a training attempt ends other than with a result. A `TrainingError` (a `JobFailure`, common/errors.py)
carries {code, message, param}: the error event's fields (codes: worker/train/protocol.py), then `jobs.error`.
`TrainingCancelled` and `TrainingPreempted` are control flow, not failures: they carry no error body and stay
plain exceptions (the child turns them into EXIT_CANCELLED and EXIT_PREEMPTED)."""

from __future__ import annotations

from common.errors import JobFailure, TuneQueueError
from worker.train.protocol import CUDA_OOM, TRAINING_ERROR


class TrainingError(JobFailure):
    """A failure inside the training child; `__main__` sends it as the error event and exits EXIT_FAILED."""


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


def _is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the worker
        return False
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def describe_failure(exc: BaseException) -> TuneQueueError:
    """Any exception from `train()` as the error the child reports: a TuneQueueError as it is (e.g. common.text's
    UnusableTemplate), anything else as a TrainingError."""
    if isinstance(exc, TuneQueueError):
        return exc
    if _is_cuda_oom(exc):
        return TrainingError(
            CUDA_OOM,
            "The GPU ran out of memory while training. Lower hyperparameters.batch_size (or raise "
            "gradient_accumulation_steps) or hyperparameters.max_seq_length, set gradient_checkpointing to true, "
            "or use method.type 'qlora'.",
            param="hyperparameters.batch_size",
        )
    text = str(exc).strip() or "(no message)"
    return TrainingError(
        TRAINING_ERROR,
        f"Training failed with {type(exc).__name__}: {text}. Retrying will not help if the same data and spec "
        "fail again; the worker log holds the full traceback for whoever runs this service.",
    )
