"""Checkpoints and what the parent does with them: checkpoint events, resuming to the same end state, preemption
(SIGUSR1 → a checkpoint, then exit 75), OOM fault injection, the OOM retry's micro-batch override, evaluation
and early stopping."""

from __future__ import annotations

import io
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.support.training import events_of, fixed_reply_rows, pair_rows, start_child, write_job_dir
from worker.train.__main__ import main
from worker.train.config import load_job
from worker.train.errors import TrainingPreempted
from worker.train.protocol import EXIT_FAILED, EXIT_PREEMPTED, Event
from worker.train.reporter import Reporter
from worker.train.run import train

pytestmark = pytest.mark.slow


def weights(path: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (path / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(path / name)


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], atol=atol, rtol=1e-4, msg=name)


def test_checkpoint_events_follow_complete_checkpoints(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), n_epochs=3, batch_size=4,
                                 save_steps=2, validation_rows=fixed_reply_rows(2)))
    reporter = Reporter(io.StringIO())
    train(job, reporter)
    events = reporter.events
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert [e["step"] for e in checkpoints] == [2, 4, 6]
    for event in checkpoints:
        path = Path(event["path"])
        assert path == (job.output_dir / "checkpoints" / f"checkpoint-{event['step']}").absolute()
        assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                "trainer_state.json"} <= {p.name for p in path.iterdir()}
        progress = [e for e in events[:events.index(event)] if e["type"] == "progress"][-1]
        assert progress["step"] == event["step"]  # the step's progress (with its evaluation) comes first
        assert event["metrics"]["train_loss"] == progress["loss"]
        valid_loss = event["metrics"]["valid_loss"]  # eval auto: each epoch = 2 steps
        assert valid_loss is not None and valid_loss == progress.get("valid_loss") and valid_loss > 0
        for key in ("train_mean_token_accuracy", "valid_mean_token_accuracy"):
            accuracy = event["metrics"][key]
            assert accuracy is not None and 0 <= accuracy <= 1


@pytest.mark.parametrize(("stage", "method"), [("sft", "lora"), ("dpo", "full")])
def test_resume_from_step_5_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_model_dir, stage, method) -> None:
    rows = fixed_reply_rows(20) if stage == "sft" else pair_rows(20)
    options: dict[str, Any] = {"stage": stage, "method": method, "n_epochs": 2, "batch_size": 4, "save_steps": 5,
                               "learning_rate": 1e-3 if method == "lora" else 1e-4}
    whole = load_job(write_job_dir(tmp_path / "whole", tiny_model_dir, rows, **options))
    uninterrupted = train(whole, Reporter(io.StringIO()))
    assert uninterrupted.steps == 10

    checkpoint = tmp_path / "fetched" / "checkpoint-5"  # as the parent fetches it from the artifact store
    shutil.copytree(whole.output_dir / "checkpoints" / "checkpoint-5", checkpoint)
    resumed_job = load_job(write_job_dir(tmp_path / "resumed", tiny_model_dir, rows, **options,
                                         job_extra={"resume_from_checkpoint": str(checkpoint)}))
    reporter = Reporter(io.StringIO())
    resumed = train(resumed_job, reporter)

    progress = [e for e in reporter.events if e["type"] == "progress"]
    assert progress[0]["step"] == 6 and progress[-1]["step"] == 10 and progress[-1]["total_steps"] == 10
    assert resumed.trained_tokens == uninterrupted.trained_tokens  # the count continues from the checkpoint
    assert resumed.last_loss == pytest.approx(uninterrupted.last_loss, rel=1e-4)
    assert_same_weights(resumed.adapter_dir, uninterrupted.adapter_dir)


def test_preempt_saves_a_checkpoint_and_resuming_finishes_the_same(tmp_path, tiny_model_dir) -> None:
    rows = fixed_reply_rows(16)
    whole = train(load_job(write_job_dir(tmp_path / "whole", tiny_model_dir, rows, n_epochs=2)),
                  Reporter(io.StringIO()))
    preempt = threading.Event()

    class PreemptAtStep3(Reporter):
        def emit(self, event: Event) -> None:
            super().emit(event)
            if event["type"] == "progress" and event["step"] == 3:
                preempt.set()

    job = load_job(write_job_dir(tmp_path / "first", tiny_model_dir, rows, n_epochs=2))
    reporter = PreemptAtStep3(io.StringIO())
    with pytest.raises(TrainingPreempted) as caught:
        train(job, reporter, preempt=preempt)
    # The flag goes up while step 3 is reported; the next boundary is the end of step 4.
    assert caught.value.step == 4
    checkpoint = reporter.events[-1]
    assert checkpoint["type"] == "checkpoint" and checkpoint["step"] == 4
    assert not any(e["type"] == "result" for e in reporter.events)

    second = load_job(write_job_dir(tmp_path / "second", tiny_model_dir, rows, n_epochs=2,
                                    job_extra={"resume_from_checkpoint": checkpoint["path"]}))
    finished = train(second, Reporter(io.StringIO()))
    assert finished.steps == whole.steps == 8
    assert_same_weights(finished.adapter_dir, whole.adapter_dir)


def test_sigusr1_makes_the_child_checkpoint_and_exit_75(tmp_path, tiny_model_dir) -> None:
    job_dir = write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(16), n_epochs=100, batch_size=1)
    child = start_child(job_dir)
    events: list[dict[str, Any]] = []
    assert child.stdout is not None
    for line in child.stdout:
        events.extend(events_of(line))
        if events and events[-1]["type"] == "progress":
            child.send_signal(signal.SIGUSR1)
            break
    rest, _ = child.communicate(timeout=60)
    events.extend(events_of(rest))
    assert child.returncode == EXIT_PREEMPTED
    checkpoint = next(e for e in events if e["type"] == "checkpoint")
    assert Path(checkpoint["path"], "trainer_state.json").is_file()
    assert events[-1]["type"] == "log" and events[-1]["message"].startswith(f"preempted at step {checkpoint['step']}")
    assert not any(e["type"] in ("result", "error") for e in events)


def test_injected_oom_is_a_cuda_oom_error(tmp_path, tiny_model_dir, capsys) -> None:
    job_dir = write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), batch_size=2,
                            job_extra={"fault": {"oom_at_step": 3}})
    assert main([str(job_dir)]) == EXIT_FAILED
    events = events_of(capsys.readouterr().out)
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2]
    assert (events[-1]["type"], events[-1]["code"]) == ("error", "cuda_oom")
    assert "batch_size" in events[-1]["message"]


def test_oom_retry_override_trains_the_same_effective_batch(tmp_path, tiny_model_dir) -> None:
    """The parent's retry: half the micro batch, twice the accumulation. Same rows per step, same loss."""
    rows, no_dropout = fixed_reply_rows(16), {"dropout": 0.0}  # dropout draws differ per micro batch
    whole = train(load_job(write_job_dir(tmp_path / "a", tiny_model_dir, rows, n_epochs=1, batch_size=4,
                                         lora=no_dropout)), Reporter(io.StringIO()))
    halved_job = load_job(write_job_dir(tmp_path / "b", tiny_model_dir, rows, n_epochs=1, batch_size=4, lora=no_dropout,
                                        resolved={"batch_size": 4, "gradient_accumulation_steps": 2}))
    reporter = Reporter(io.StringIO())
    halved = train(halved_job, reporter)
    first = reporter.events[0]
    assert first["type"] == "log" and "4 steps of 4 (2 × 2)" in first["message"]
    assert halved.steps == whole.steps == 4
    assert halved.first_loss == pytest.approx(whole.first_loss, rel=1e-4)
    assert_same_weights(halved.adapter_dir, whole.adapter_dir, atol=1e-4)


def test_early_stopping_ends_when_validation_stops_improving(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), batch_size=2, n_epochs=5,
                                 learning_rate=1e-9, eval_steps=1, early_stopping_patience=2,
                                 validation_rows=fixed_reply_rows(2)))
    reporter = Reporter(io.StringIO())
    result = train(job, reporter)
    assert result.steps == 3  # evaluations at 1 (best), 2 and 3 (no better): stop
    assert any(e["type"] == "log" and e["message"].startswith("early stopping at step 3") for e in reporter.events)


def test_validation_split_holds_rows_out(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(16), n_epochs=1,
                                 spec_extra={"validation_split": 0.25}))
    reporter = Reporter(io.StringIO())
    result = train(job, reporter)
    assert result.steps == 3  # 12 rows left, batches of 4
    assert [e["step"] for e in reporter.events if e["type"] == "progress" and "valid_loss" in e] == [3]
