"""The Trainer callback that turns the training loop into events and obeys the parent's signals.

- progress every logging step (and at the last step), with the evaluation's numbers on the step that evaluated;
- a checkpoint event once a checkpoint directory is completely written;
- cancel (SIGTERM → `stop`): end at the next step boundary;
- preempt (SIGUSR1 → `preempt`): save a checkpoint at the next step boundary, then end;
- early stopping on the validation loss; test-only fault injection (`fault.oom_at_step`);
- with several ranks (worker/train/ranks.py): the ranks agree on cancel and preempt at each step boundary, and a
  checkpoint is reported once every rank has written its part of it.

The stages' metrics arrive as the Trainer logs them (`StageTrainer.log`: the window's mean, `eval_` before an
evaluation's); they leave under OpenAI's names (`EVALUATION_KEYS`, `train_mean_token_accuracy`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.cpuinfo import peak_rss_bytes
from worker.train.ranks import agree
from worker.train.reporter import Reporter

# An evaluation's logs → the event's keys: the loss, next-token accuracy over the trained tokens (sft, pt) and
# how often the implicit reward or score ranks chosen over rejected (dpo, orpo, rm, kto).
EVALUATION_KEYS = {"eval_loss": "valid_loss", "eval_token_accuracy": "valid_mean_token_accuracy",
                   "eval_preference_accuracy": "valid_preference_accuracy"}


def peak_memory_mb() -> float:
    """CUDA: the peak of allocated tensors; CPU: the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_bytes() / 2**20


class ProgressCallback(TrainerCallback):
    """Trained tokens are counted by `StageTrainer` (non-padding tokens of every batch through forward and
    backward). Tokens per second is measured over the window since the previous progress event."""

    def __init__(
        self,
        reporter: Reporter,
        stop: threading.Event,
        preempt: threading.Event | None = None,
        *,
        evaluates: bool = False,
        early_stopping_patience: int | None = None,
        oom_at_step: int | None = None,
    ) -> None:
        self.reporter = reporter
        self.stop = stop
        self.preempt = preempt or threading.Event()
        self.evaluates = evaluates
        self.patience = early_stopping_patience
        self.oom_at_step = oom_at_step
        self.cancelled = False
        self.preempted = False
        self.early_stopped = False
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.last_token_accuracy: float | None = None
        self.last_eval: dict[str, float | None] | None = None
        self.last_checkpoint: str | None = None
        self.last_reported_step = 0
        self._best_eval: float | None = None
        self._bad_evals = 0
        self._pending: dict[str, Any] | None = None  # a progress event waiting for this step's evaluation
        self._started = 0.0
        self._window_time = 0.0
        self._window_tokens = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._started = self._window_time = time.monotonic()
        self._window_tokens = state.num_input_tokens_seen
        self._start_step = state.global_step

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.oom_at_step is not None and state.global_step + 1 == self.oom_at_step:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected at step {self.oom_at_step} by job.json "
                "fault.oom_at_step)")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        last = state.global_step >= state.max_steps
        stop, preempt = agree([self.stop.is_set(), self.preempt.is_set()], args.device)
        if stop:
            self.stop.set()
        if preempt:
            self.preempt.set()
        if self.stop.is_set():
            self.cancelled = True
            control.should_training_stop = True
            return
        if self.preempt.is_set():
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        if last:
            control.should_log = True  # the last step always reports its loss, whatever logging_steps is
            control.should_evaluate = self.evaluates
        if control.should_evaluate:
            control.should_log = True  # the evaluation's numbers ride on this step's progress event

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kw: Any):
        if not logs:
            return
        if "eval_loss" in logs:  # an evaluation's numbers
            self._evaluated(state, control, logs)
            return
        if "loss" not in logs:  # the end-of-training summary (train_loss, train_runtime, …)
            return
        loss = float(logs["loss"])
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss
        if "token_accuracy" in logs:
            self.last_token_accuracy = float(logs["token_accuracy"])  # for checkpoints' train_mean_token_accuracy
        event = self._progress(state, loss=loss, learning_rate=logs.get("learning_rate"),
                               grad_norm=logs.get("grad_norm"))
        if control.should_evaluate:
            self._pending = event
        else:
            self.reporter.progress(**event)

    def _evaluated(self, state: TrainerState, control: TrainerControl, logs: dict[str, float]) -> None:
        self.last_eval = {name: float(logs[key]) for key, name in EVALUATION_KEYS.items() if key in logs}
        event = self._pending or self._progress(state, loss=None, learning_rate=None, grad_norm=None)
        self._pending = None
        self.reporter.progress(**event, evaluation=self.last_eval)
        if self.patience:
            loss = self.last_eval["valid_loss"]
            if self._best_eval is None or (loss is not None and loss < self._best_eval - 1e-4):
                self._best_eval, self._bad_evals = loss, 0
            else:
                self._bad_evals += 1
                if self._bad_evals >= self.patience and state.global_step < state.max_steps:
                    self.early_stopped = True
                    control.should_training_stop = True
                    self.reporter.log(f"early stopping at step {state.global_step}: the validation loss did not "
                                      f"improve on {self._best_eval:.4f} for {self.patience} evaluations")

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's RNG state is in the folder before the parent uploads it
        path = (Path(str(args.output_dir)) / f"checkpoint-{state.global_step}").absolute()
        self.last_checkpoint = str(path)
        self.reporter.checkpoint(step=state.global_step, path=str(path), metrics={
            "train_loss": self.last_loss, "train_mean_token_accuracy": self.last_token_accuracy,
            **(self.last_eval or {})})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self._pending is not None:  # an evaluation that did not happen (stopped in between)
            self.reporter.progress(**self._pending)
            self._pending = None
        # A safety net: the parent should always see step == total_steps at the end.
        if not (self.cancelled or self.preempted) and state.global_step > self.last_reported_step:
            self.reporter.progress(**self._progress(state, loss=None, learning_rate=None, grad_norm=None))

    def _progress(self, state: TrainerState, *, loss: float | None, learning_rate: Any,
                  grad_norm: Any) -> dict[str, Any]:
        now = time.monotonic()
        tokens = int(state.num_input_tokens_seen)
        window = now - self._window_time
        tokens_per_second = (tokens - self._window_tokens) / window if window > 0 else None
        elapsed = now - self._started
        step, total = state.global_step, state.max_steps
        done = step - self._start_step
        eta = elapsed / done * (total - step) if done > 0 else None
        self.last_reported_step = step
        self._window_time, self._window_tokens = now, tokens
        return {
            "step": step, "total_steps": total, "epoch": float(state.epoch or 0.0), "loss": loss,
            "learning_rate": None if learning_rate is None else float(learning_rate),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens_per_second": tokens_per_second, "trained_tokens": tokens, "eta_seconds": eta,
            "peak_memory_mb": peak_memory_mb(),
        }
