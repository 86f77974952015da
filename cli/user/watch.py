"""`jobs watch`: follow a job's event stream (tunequeue_client's `stream`, resumed with Last-Event-ID after a
dropped connection) to its end. On a terminal, a live progress bar (step/total, loss, tokens/s, ETA, memory)
with the job's events printed above it; elsewhere (a pipe, a CI log), the events as lines. The exit code says how
the job ended: 0 succeeded, 5 failed, 6 cancelled (cli/user/exits.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from cli.user.exits import API_ERROR, INTERRUPTED, JOB_CANCELLED, JOB_FAILED, OK
from cli.user.output import duration, number, printable
from tunequeue_client import Client

EXIT_BY_STATUS = {"succeeded": OK, "failed": JOB_FAILED, "cancelled": JOB_CANCELLED}
LEVEL_STYLE = {"warning": "yellow", "warn": "yellow", "error": "red"}


def memory_text(progress: dict[str, Any]) -> str:
    """GPU memory per card (what the job holds when NVML can tell, else what the card uses), or the training
    process's RSS on a host without a GPU."""
    cards = []
    for gpu in progress.get("gpus") or []:
        used = gpu.get("process_memory_mb") or gpu.get("memory_used_mb")
        total = gpu.get("memory_total_mb")
        if used is not None:
            cards.append(f"GPU{gpu.get('index', '')} {used / 1024:.1f}/{(total or 0) / 1024:.0f} GB")
    if cards:
        return " ".join(cards)
    rss = progress.get("process_rss_mb") or progress.get("peak_memory_mb")
    return f"RSS {rss:.0f} MB" if rss else "mem -"


def event_line(event: dict[str, Any]) -> Text:
    at = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S") if event.get("created_at") else ""
    level = event.get("level") or "info"
    style = LEVEL_STYLE.get(level, "dim" if event.get("type") == "metrics" else "")
    return Text(f"{at} {level:7} {printable(str(event.get('message', '')))}", style=style)


class Bar:
    """The live progress bar of one job."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.fields[steps]}"), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"), TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[memory]}"), console=console, transient=False, refresh_per_second=4)
        self.task: TaskID = self.progress.add_task(job_id, total=None, steps="-/- steps", loss="-", speed="-",
                                                   eta="-", memory="mem -")
        self.job_id = job_id

    def status(self, status: str) -> None:
        self.progress.update(self.task, description=f"{self.job_id} {status}")

    def update(self, report: dict[str, Any]) -> None:
        step, total = report.get("step"), report.get("total_steps")
        fields: dict[str, Any] = {}
        if step is not None:
            fields.update(completed=step, steps=f"{step}/{total if total is not None else '?'} steps")
        if total is not None:
            fields["total"] = total
        if report.get("loss") is not None:
            fields["loss"] = number(report["loss"])
        if report.get("tokens_per_second") is not None:
            fields["speed"] = f"{report['tokens_per_second']:.0f}"
        if "eta_seconds" in report:
            fields["eta"] = duration(report.get("eta_seconds"))
        if "gpus" in report or "process_rss_mb" in report:
            fields["memory"] = memory_text(report)
        self.progress.update(self.task, **fields)


def watch(api: Client, job_id: str, console: Console, *, quiet: bool = False) -> int:
    """Follow the job to its end; the exit code of how it ended. `quiet`: print nothing (for --json)."""
    live = console.is_terminal and not quiet
    bar = Bar(console, job_id) if live else None

    def say(text: Text) -> None:
        if bar is not None:
            bar.progress.console.print(text)
        elif not quiet:
            console.print(text)

    def reconnecting(exc: Exception, failures: int) -> None:
        note = Text(f"connection lost ({type(exc).__name__}); reconnecting, try {failures}", style="yellow")
        say(note)

    status = api.get_job(job_id)["status"]
    if bar is not None:
        bar.status(status)
        bar.progress.start()
    try:
        for frame in api.stream(job_id, on_reconnect=reconnecting, max_reconnects=600):
            if frame.event == "progress" and bar is not None:
                bar.update(frame.data)
            elif frame.event == "message":
                event = frame.data
                if event.get("type") == "state":
                    status = str((event.get("data") or {}).get("status") or status)
                    if bar is not None:
                        bar.status(status)
                if event.get("type") == "metrics" and bar is not None:
                    bar.update(event.get("data") or {})
                say(event_line(event))
            elif frame.event == "done":
                status = frame.data.get("status", status)
    except KeyboardInterrupt:
        if bar is not None:
            bar.progress.stop()
        console.print(f"stopped watching; the job goes on (tunequeue jobs watch {job_id})", markup=False)
        return INTERRUPTED
    except httpx.TransportError as exc:
        if bar is not None:
            bar.progress.stop()
        console.print(f"lost the connection to the API for good ({exc}); the job goes on", markup=False)
        return API_ERROR
    finally:
        if bar is not None:
            bar.progress.stop()
    job = api.get_job(job_id)
    if not quiet:
        console.print(summary(job), highlight=False)
    return EXIT_BY_STATUS.get(job["status"], API_ERROR)


def summary(job: dict[str, Any]) -> Text:
    status = job["status"]
    if status == "succeeded":
        return Text(f"{job['id']} succeeded: model {job.get('fine_tuned_model')} "
                    f"({job.get('trained_tokens') or 0} tokens trained)", style="green")
    if status == "failed":
        err = job.get("error") or {}
        return Text(f"{job['id']} failed: {err.get('code')}: {err.get('message')}", style="red")
    return Text(f"{job['id']} {status}", style="yellow")
