"""The child's side of the protocol in `worker/train/protocol.py`: one typed method per event, each written as
one line on stdout (the real one: `worker/train/__main__.py` points everything else at stderr)."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from typing import Literal, TextIO

from worker.cpuinfo import peak_rss_bytes
from worker.train.protocol import (
    CheckpointEvent,
    ErrorEvent,
    EvalSample,
    EvalSamplesEvent,
    Event,
    LogEvent,
    ProgressEvent,
    ResultEvent,
    encode,
)

VALID_METRICS = ("valid_loss", "valid_mean_token_accuracy", "valid_preference_accuracy")


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or Infinity: a diverged loss is reported as null rather than as an unparsable line."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Reporter:
    """Writes events to `stream` (stdout by default) and keeps them in `events` for in-process callers.
    `errors_only`: a rank other than 0 of a job of several devices (worker/train/ranks.py), which writes only its
    own error events; rank 0 reports everything else for all of them."""

    def __init__(self, stream: TextIO | None = None, *, errors_only: bool = False) -> None:
        self._stream = stream
        self.errors_only = errors_only
        self._lock = threading.Lock()
        self.events: list[Event] = []
        # called with each event after it is written (the job's trackers, worker/train/trackers.py)
        self.observers: list[Callable[[Event], None]] = []

    def emit(self, event: Event) -> None:
        if self.errors_only and event["type"] != "error":
            return
        line = encode(event)
        with self._lock:
            self.events.append(event)
            stream = self._stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()
        for observer in list(self.observers):
            observer(event)

    def progress(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: float,
        loss: float | None,
        learning_rate: float | None,
        grad_norm: float | None,
        tokens_per_second: float | None,
        trained_tokens: int,
        eta_seconds: float | None,
        peak_memory_mb: float | None = None,
        evaluation: dict[str, float | None] | None = None,
    ) -> None:
        event: ProgressEvent = {
            "type": "progress",
            "step": int(step),
            "total_steps": int(total_steps),
            "epoch": float(epoch),
            "loss": _finite(loss),
            "learning_rate": _finite(learning_rate),
            "grad_norm": _finite(grad_norm),
            "tokens_per_second": _finite(tokens_per_second),
            "trained_tokens": int(trained_tokens),
            "eta_seconds": _finite(eta_seconds),
            "peak_memory_mb": _finite(peak_memory_mb),
        }
        if evaluation is not None:  # the keys the stage measured, of VALID_METRICS
            for key in VALID_METRICS:
                if key in evaluation:
                    event[key] = _finite(evaluation[key])  # type: ignore[literal-required]
        self.emit(event)

    def checkpoint(self, *, step: int, path: str, metrics: dict[str, float | None]) -> None:
        event: CheckpointEvent = {
            "type": "checkpoint",
            "step": int(step),
            "path": path,
            "metrics": {"train_loss": _finite(metrics.get("train_loss")),
                        "train_mean_token_accuracy": _finite(metrics.get("train_mean_token_accuracy")),
                        "valid_loss": _finite(metrics.get("valid_loss")),
                        "valid_mean_token_accuracy": _finite(metrics.get("valid_mean_token_accuracy")),
                        "valid_preference_accuracy": _finite(metrics.get("valid_preference_accuracy"))},
        }
        self.emit(event)

    baseline_rss_bytes: int | None = None  # the process's RSS once the training stack is imported (__main__)

    def log(self, message: str, level: Literal["info", "warning"] = "info") -> None:
        event: LogEvent = {"type": "log", "level": level, "message": message}
        self.emit(event)

    def result(
        self,
        *,
        adapter_dir: str,
        first_loss: float | None,
        last_loss: float | None,
        train_loss: float | None,
        trained_tokens: int,
        steps: int,
        stage: str = "sft",
        method: str = "lora",
        merged_dir: str | None = None,
    ) -> None:
        event: ResultEvent = {
            "type": "result",
            "adapter_dir": adapter_dir,
            "first_loss": _finite(first_loss),
            "last_loss": _finite(last_loss),
            "train_loss": _finite(train_loss),
            "trained_tokens": int(trained_tokens),
            "steps": int(steps),
            "stage": stage,
            "method": method,
        }
        if merged_dir is not None:
            event["merged_dir"] = merged_dir
        event["peak_memory"] = peak_memory(self.baseline_rss_bytes)
        self.emit(event)

    def eval_samples(self, *, step: int, samples: list[EvalSample], seconds: float | None = None) -> None:
        event: EvalSamplesEvent = {
            "type": "eval_samples",
            "step": int(step),
            "samples": [{"prompt": s["prompt"], "reference": s["reference"], "answer": s["answer"]} for s in samples],
        }
        if seconds is not None and math.isfinite(seconds):
            event["seconds"] = round(float(seconds), 3)
        self.emit(event)

    def error(self, code: str, message: str, param: str | None = None) -> None:
        event: ErrorEvent = {"type": "error", "code": code, "message": message, "param": param}
        self.emit(event)


def peak_memory(baseline_rss_bytes: int | None) -> dict[str, int | None]:
    """The peak the attempt held: RSS (and its growth over `baseline_rss_bytes`), and on CUDA torch's max
    allocated on the training device."""
    cuda = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = int(torch.cuda.max_memory_allocated())
    peak = peak_rss_bytes()
    return {"rss_peak_bytes": peak, "rss_baseline_bytes": baseline_rss_bytes,
            "rss_growth_bytes": peak - baseline_rss_bytes if baseline_rss_bytes is not None else None,
            "cuda_max_allocated_bytes": cuda}
