"""The child↔parent protocol (worker/train/protocol.py): what the child's `Reporter` writes, the parent's
`parse_line` reads back unchanged, and every other line is ignored rather than relayed half-formed."""

from __future__ import annotations

import io
import json

from worker.train.protocol import EVENT_PREFIX, ProgressEvent, parse_line
from worker.train.reporter import Reporter


def reported_lines(reporter: Reporter) -> list[str]:
    assert isinstance(reporter._stream, io.StringIO)
    return reporter._stream.getvalue().splitlines()


def test_every_event_the_reporter_writes_parses_back_as_it_was_kept() -> None:
    reporter = Reporter(io.StringIO())
    reporter.log("5 steps of 4", "info")
    reporter.progress(step=1, total_steps=5, epoch=0.2, loss=2.5, learning_rate=1e-3, grad_norm=0.5,
                      tokens_per_second=100.0, trained_tokens=64, eta_seconds=None, peak_memory_mb=300.0)
    reporter.progress(step=2, total_steps=5, epoch=0.4, loss=float("nan"), learning_rate=1e-3, grad_norm=None,
                      tokens_per_second=None, trained_tokens=128, eta_seconds=3.0,
                      evaluation={"valid_loss": 1.5, "valid_preference_accuracy": None})
    reporter.checkpoint(step=2, path="/w/checkpoint-2", metrics={"train_loss": float("inf"), "valid_loss": 1.5})
    reporter.result(adapter_dir="/w/adapter", first_loss=2.5, last_loss=1.0, train_loss=1.7, trained_tokens=320,
                    steps=5, merged_dir="/w/merged")
    reporter.error("cuda_oom", "out of memory", "hyperparameters.batch_size")

    lines = reported_lines(reporter)
    assert all(line.startswith(EVENT_PREFIX) for line in lines)
    parsed = [parse_line(line) for line in lines]
    assert parsed == reporter.events
    assert [e["type"] for e in reporter.events] == ["log", "progress", "progress", "checkpoint", "result", "error"]
    diverged = reporter.events[2]
    assert diverged["type"] == "progress" and diverged["loss"] is None, "NaN is sent as null, not as bad JSON"
    assert (diverged.get("valid_loss"), diverged.get("valid_preference_accuracy")) == (1.5, None)
    assert "valid_mean_token_accuracy" not in diverged, "only the accuracies the stage measured"
    checkpoint = reporter.events[3]
    assert checkpoint["type"] == "checkpoint"
    assert checkpoint["metrics"] == {"train_loss": None, "train_mean_token_accuracy": None, "valid_loss": 1.5,
                                     "valid_mean_token_accuracy": None, "valid_preference_accuracy": None}


def test_lines_that_are_not_whole_events_are_ignored() -> None:
    progress: ProgressEvent = {
        "type": "progress", "step": 1, "total_steps": 2, "epoch": 0.5, "loss": 1.0, "learning_rate": 1e-3,
        "grad_norm": 0.1, "tokens_per_second": 10.0, "trained_tokens": 8, "eta_seconds": 1.0, "peak_memory_mb": None,
    }
    assert parse_line(EVENT_PREFIX + json.dumps(progress)) == progress, "optional eval keys may be absent"
    incomplete = {k: v for k, v in progress.items() if k != "trained_tokens"}
    for line in [
        json.dumps(progress),  # library noise that happens to be JSON: no prefix
        "Loading checkpoint shards: 100%",
        EVENT_PREFIX + "{not json",
        EVENT_PREFIX + json.dumps([progress]),
        EVENT_PREFIX + json.dumps({**progress, "type": "telemetry"}),
        EVENT_PREFIX + json.dumps(incomplete),
        EVENT_PREFIX + json.dumps({"type": "checkpoint", "step": 2, "metrics": {}}),  # no path
    ]:
        assert parse_line(line) is None, line
