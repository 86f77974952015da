"""Evaluation is part of the job (docs/progress.md, Evaluation): with validation data, every evaluation reports
`valid_loss` and the stage's accuracy — `valid_mean_token_accuracy` for sft, `valid_preference_accuracy` for the
pair stages and kto — on that step's progress event and in the next checkpoint's metrics, with sane values, and
on a learnable toy task the accuracy rises."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest

from tests.support.training import fixed_reply_rows, kto_rows, pair_rows, write_job_dir
from worker.train.config import load_job
from worker.train.reporter import Reporter
from worker.train.run import train

pytestmark = pytest.mark.slow

ACCURACY = {"sft": "valid_mean_token_accuracy", "dpo": "valid_preference_accuracy",
            "orpo": "valid_preference_accuracy", "rm": "valid_preference_accuracy", "kto": "valid_preference_accuracy"}
ROWS = {"sft": fixed_reply_rows, "dpo": pair_rows, "orpo": pair_rows, "rm": pair_rows, "kto": kto_rows}


def evaluations(tmp_path: Path, base: Path, stage: str, **options: Any) -> tuple[list[dict[str, Any]], Reporter]:
    """Train on 16 rows, validate on 4 held-out ones (prompts the training rows do not have); the progress
    events of the steps that evaluated."""
    rows = ROWS[stage](20)
    job = load_job(write_job_dir(tmp_path, base, rows[:16], validation_rows=rows[16:], stage=stage,
                                 lr_scheduler="constant", **options))
    reporter = Reporter(io.StringIO())
    train(job, reporter)
    return [dict(e) for e in reporter.events if e["type"] == "progress" and "valid_loss" in e], reporter


def test_sft_evaluations_report_loss_and_a_rising_token_accuracy(tmp_path: Path, tiny_model_dir: Path) -> None:
    evaluated, reporter = evaluations(tmp_path, tiny_model_dir, "sft", n_epochs=4, save_steps=8)
    assert [e["step"] for e in evaluated] == [4, 8, 12, 16]  # once per epoch of 4 steps
    for event in evaluated:
        assert math.isfinite(event["valid_loss"]) and event["valid_loss"] > 0
        assert 0 <= event["valid_mean_token_accuracy"] <= 1
        assert "valid_preference_accuracy" not in event
    accuracies = [e["valid_mean_token_accuracy"] for e in evaluated]
    assert accuracies[-1] > accuracies[0] + 0.2, accuracies  # the held-out answers are the learnt reply
    assert evaluated[-1]["valid_loss"] < evaluated[0]["valid_loss"]
    checkpoints = {e["step"]: e["metrics"] for e in reporter.events if e["type"] == "checkpoint"}
    for step, metrics in checkpoints.items():  # the last evaluation rides along with each checkpoint
        at = next(e for e in evaluated if e["step"] == step)
        assert (metrics["valid_loss"], metrics["valid_mean_token_accuracy"]) == (
            at["valid_loss"], at["valid_mean_token_accuracy"])
        train_accuracy = metrics["train_mean_token_accuracy"]
        assert train_accuracy is not None and 0 <= train_accuracy <= 1
        assert metrics["valid_preference_accuracy"] is None
    assert sorted(checkpoints) == [8, 16]


@pytest.mark.parametrize("stage", ["dpo", "orpo", "rm", "kto"])
def test_preference_stages_report_how_often_chosen_outranks_rejected(tmp_path: Path, tiny_model_dir: Path,
                                                                     stage: str) -> None:
    evaluated, _ = evaluations(tmp_path, tiny_model_dir, stage, n_epochs=3, learning_rate=5e-3)
    assert [e["step"] for e in evaluated] == [4, 8, 12]
    for event in evaluated:
        assert math.isfinite(event["valid_loss"])
        assert 0 <= event["valid_preference_accuracy"] <= 1
        assert "valid_mean_token_accuracy" not in event
    # The chosen answer is always the same good one: on held-out prompts the trained model ranks it first.
    assert evaluated[-1]["valid_preference_accuracy"] > 0.9, [e["valid_preference_accuracy"] for e in evaluated]
    assert evaluated[-1]["valid_loss"] <= evaluated[0]["valid_loss"]
