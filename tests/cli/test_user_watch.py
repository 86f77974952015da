"""What `jobs watch` shows from a progress report (cli/user/watch.py): the memory the job holds on each GPU, or
the process's RSS on a host without one; the bar's step/total, loss, tokens/s and ETA; and the exit code of each
way a job ends."""

from __future__ import annotations

import io

from rich.console import Console

from cli.user.exits import JOB_CANCELLED, JOB_FAILED, OK
from cli.user.watch import EXIT_BY_STATUS, Bar, memory_text

GPU = {"index": 0, "name": "H200", "memory_used_mb": 30720, "memory_total_mb": 143771, "process_memory_mb": 3072}


def test_memory_is_what_the_job_holds_per_gpu_else_the_card_s_use_else_the_rss() -> None:
    assert memory_text({"gpus": [GPU, {**GPU, "index": 1, "process_memory_mb": None}]}) == \
        "GPU0 3.0/140 GB GPU1 30.0/140 GB"
    assert memory_text({"gpus": [], "process_rss_mb": 512.4}) == "RSS 512 MB"
    assert memory_text({"gpus": []}) == "mem -"


def test_the_bar_shows_step_total_loss_speed_eta_and_memory() -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=200, force_terminal=False, color_system=None)
    bar = Bar(console, "ftjob-1")
    bar.status("running")
    bar.update({"step": 12, "total_steps": 48, "loss": 1.23456, "tokens_per_second": 2380.4, "eta_seconds": 75,
                "gpus": [GPU]})
    console.print(bar.progress.get_renderable())
    line = screen.getvalue()
    assert "ftjob-1 running" in line and "12/48 steps" in line and "loss 1.235" in line, line
    assert "2380 tok/s" in line and "ETA 1m15s" in line and "GPU0 3.0/140 GB" in line, line
    task = bar.progress.tasks[0]
    assert (task.completed, task.total) == (12, 48)


def test_each_ending_has_its_exit_code() -> None:
    assert EXIT_BY_STATUS == {"succeeded": OK, "failed": JOB_FAILED, "cancelled": JOB_CANCELLED}
    assert len({OK, JOB_FAILED, JOB_CANCELLED}) == 3
