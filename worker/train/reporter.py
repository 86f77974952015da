"""How the training child talks to its parent: one `TUNEQUEUE_EVENT {json}` line per event on stdout.

The parent ignores every other line, so library output is harmless; libraries are still pointed at stderr
(see `worker.train.__main__`). Event shapes:

- progress: step, total_steps, epoch, loss, learning_rate, grad_norm, tokens_per_second, trained_tokens,
  eta_seconds (null where not known yet), peak_memory_mb (CUDA: max allocated; CPU: the process's peak RSS);
  at a step that evaluated also eval_loss and eval_accuracy (null where the stage has no accuracy)
- checkpoint: step, path (a complete Trainer checkpoint dir), metrics {train_loss, eval_loss, token_accuracy}
- log: level ("info" | "warning"), message
- result: adapter_dir, first_loss, last_loss, train_loss, trained_tokens, steps, stage, method, and merged_dir
  when publish.merged asked for a merged model. For method full/freeze adapter_dir holds the full weights.
- error: code, message, param
"""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any, Literal, TextIO

EVENT_PREFIX = "TUNEQUEUE_EVENT "


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
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        line = EVENT_PREFIX + json.dumps(event, separators=(",", ":"), allow_nan=False)
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
        event: dict[str, Any] = {
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
        if evaluation is not None:
            event["eval_loss"] = _finite(evaluation.get("eval_loss"))
            event["eval_accuracy"] = _finite(evaluation.get("eval_accuracy"))
        self.emit(event)

    def checkpoint(self, *, step: int, path: str, metrics: dict[str, float | None]) -> None:
        self.emit({
            "type": "checkpoint",
            "step": int(step),
            "path": path,
            "metrics": {key: _finite(metrics.get(key)) for key in ("train_loss", "eval_loss", "token_accuracy")},
        })

    def log(self, message: str, level: Literal["info", "warning"] = "info") -> None:
        self.emit({"type": "log", "level": level, "message": message})

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
        event: dict[str, Any] = {
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
        self.emit({"type": "error", "code": code, "message": message, "param": param})
