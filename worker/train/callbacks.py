"""The Trainer callback that turns the training loop into progress events and stops it on cancel."""

from __future__ import annotations

import threading
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.train.reporter import Reporter


class ProgressCallback(TrainerCallback):
    """Reports every logging step and ends training at the next step boundary once `stop` is set.

    Trained tokens are the non-padding input tokens of every batch that went through forward and backward,
    counted by the Trainer from each batch's attention mask (`include_num_input_tokens_seen="non_padding"`,
    set by `worker.train.sft`). Tokens per second is measured over the window since the previous event.
    """

    def __init__(self, reporter: Reporter, stop: threading.Event) -> None:
        self.reporter = reporter
        self.stop = stop
        self.cancelled = False
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.last_reported_step = 0
        self._started = 0.0
        self._window_time = 0.0
        self._window_tokens = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._started = self._window_time = time.monotonic()
        self._window_tokens = state.num_input_tokens_seen

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.stop.is_set():
            self.cancelled = True
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            control.should_log = True  # the last step always reports its loss, whatever logging_steps is

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ):
        if not logs:
            return
        if "eval_loss" in logs:
            self.reporter.log(f"validation loss after epoch {state.epoch or 0:.2f}: {logs['eval_loss']:.4f}")
            return
        if "loss" not in logs:  # the end-of-training summary (train_loss, train_runtime, …)
            return
        loss = float(logs["loss"])
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss
        self._report(state, loss=loss, learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        # A safety net: the parent should always see step == total_steps at the end.
        if not self.cancelled and state.global_step > self.last_reported_step:
            self._report(state, loss=None, learning_rate=None, grad_norm=None)

    def _report(self, state: TrainerState, *, loss: float | None, learning_rate: Any, grad_norm: Any) -> None:
        now = time.monotonic()
        tokens = int(state.num_input_tokens_seen)
        window = now - self._window_time
        tokens_per_second = (tokens - self._window_tokens) / window if window > 0 else None
        elapsed = now - self._started
        step, total = state.global_step, state.max_steps
        eta = elapsed / step * (total - step) if step > 0 else None
        self.reporter.progress(
            step=step,
            total_steps=total,
            epoch=float(state.epoch or 0.0),
            loss=loss,
            learning_rate=None if learning_rate is None else float(learning_rate),
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens_per_second=tokens_per_second,
            trained_tokens=tokens,
            eta_seconds=eta,
        )
        self.last_reported_step = step
        self._window_time, self._window_tokens = now, tokens
