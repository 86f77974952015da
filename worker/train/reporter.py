"""The child's side of the protocol in `worker/train/protocol.py`: one typed method per event, each written as
one line on stdout (the real one: `worker/train/__main__.py` points everything else at stderr)."""

from __future__ import annotations

import math
import sys
import threading
from typing import Literal, TextIO

from worker.train.protocol import (
    CheckpointEvent,
    ErrorEvent,
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
    """Writes events to `stream` (stdout by default) and keeps them in `events` for in-process callers."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        line = encode(event)
        with self._lock:
            self.events.append(event)
            stream = self._stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

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
        self.emit(event)

    def error(self, code: str, message: str, param: str | None = None) -> None:
        event: ErrorEvent = {"type": "error", "code": code, "message": message, "param": param}
        self.emit(event)
