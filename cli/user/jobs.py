"""`tunequeue jobs …`: create from a JSON or YAML spec (and watch), watch, list, get, cancel, events, metrics
(with a loss curve drawn in the terminal)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.user.exits import API_ERROR, UserError
from cli.user.output import duration, number, out, pairs, print_json, print_json_line, table, when
from cli.user.plot import plot
from cli.user.session import client
from cli.user.spec import line_of, load_spec
from cli.user.watch import event_line, memory_text, watch
from tunequeue_client import ApiError

app = typer.Typer(no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]


@app.command("create", help="submit a job from a spec file (JSON, or YAML with the same fields)")
def create(ctx: typer.Context,
           file: Annotated[Path, typer.Option("-f", "--file", help="spec.yaml, spec.yml or spec.json "
                                              "(docs/job-spec.md)")],
           watch_it: Annotated[bool, typer.Option("--watch", help="follow it to its end; the exit code says how "
                                                  "it ended")] = False,
           as_json: Json = False) -> None:
    spec = load_spec(file)
    api = client(ctx)
    try:
        job = api.create_job(spec)
    except ApiError as exc:
        line = line_of(file.read_text(), exc.param) if exc.param else None
        where = f"{file} line {line}" if line else str(file)
        raise UserError(f"{where}: {exc.message} [{exc.status} {exc.code}]"
                        + (f" (param: {exc.param})" if exc.param else ""), API_ERROR) from None
    if not watch_it:
        if as_json:
            print_json(job)
        else:
            out.print(f"created {job['id']} ({job['status']}); follow it with: tunequeue jobs watch {job['id']}",
                      markup=False)
        return
    if not as_json:
        out.print(f"created {job['id']} ({job['status']})", markup=False)
    code = watch(api, job["id"], out, quiet=as_json)
    if as_json:
        print_json(api.get_job(job["id"]))
    raise typer.Exit(code)



@app.command("watch", help="follow a job live to its end: exit 0 succeeded, 5 failed, 6 cancelled")
def watch_job(ctx: typer.Context, job_id: str,
              as_json: Annotated[bool, typer.Option("--json", help="no live output; the job's JSON at the end")]
              = False) -> None:
    api = client(ctx)
    code = watch(api, job_id, out, quiet=as_json)
    if as_json:
        print_json(api.get_job(job_id))
    raise typer.Exit(code)


def _steps(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    if progress.get("step") is None:
        return "-"
    return f"{progress['step']}/{progress.get('total_steps') or '?'}"


@app.command("list", help="your organization's jobs, newest first")
def list_jobs(ctx: typer.Context,
              status: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
              user: Annotated[str | None, typer.Option(help="only this user's")] = None,
              limit: Annotated[int, typer.Option(help="at most this many")] = 20, as_json: Json = False) -> None:
    found: list[dict[str, Any]] = list(islice(client(ctx).list_jobs(status=status, user=user), limit))
    if as_json:
        print_json(found)
        return
    out.print(table(["id", "status", "base model", "user", "steps", "queue", "created", "fine-tuned model"],
                    ([j["id"], j["status"], j.get("base_model"), j.get("user"), _steps(j),
                      j.get("queue_position"), when(j.get("created_at")), j.get("fine_tuned_model")]
                     for j in found)))


@app.command("get", help="one job: status, progress, model, error")
def get(ctx: typer.Context, job_id: str, as_json: Json = False) -> None:
    job = client(ctx).get_job(job_id)
    if as_json:
        print_json(job)
        return
    progress = job.get("progress") or {}
    error = job.get("error") or {}
    method = (job.get("method") or {}).get("type")
    out.print(pairs([
        ("id", job["id"]), ("status", job["status"]), ("base model", job.get("base_model")),
        ("stage / method", f"{job.get('stage')} / {method}"), ("training file", job.get("training_file")),
        ("validation file", job.get("validation_file")), ("user", job.get("user")),
        ("priority", job.get("priority")), ("queue position", job.get("queue_position")),
        ("estimated start", when(job["estimated_start_at"]) if job.get("estimated_start_at") else None),
        ("created", when(job.get("created_at"))), ("started", when(job.get("started_at"))),
        ("finished", when(job.get("finished_at"))),
        ("steps", _steps(job) if progress else None), ("loss", number(progress.get("loss")) if progress else None),
        ("tokens/s", number(progress.get("tokens_per_second")) if progress.get("tokens_per_second") else None),
        ("ETA", duration(progress.get("eta_seconds")) if progress.get("eta_seconds") is not None else None),
        ("memory", memory_text(progress) if progress else None),
        ("fine-tuned model", job.get("fine_tuned_model")), ("trained tokens", job.get("trained_tokens")),
        ("error", f"{error.get('code')}: {error.get('message')}" if error else None),
    ]))


@app.command("cancel", help="cancel a job (a running one stops at its next step)")
def cancel(ctx: typer.Context, job_id: str, as_json: Json = False) -> None:
    job = client(ctx).cancel_job(job_id)
    if as_json:
        print_json(job)
    else:
        out.print(f"{job['id']}: {job['status']}" + (" (cancel requested)" if job.get("cancel_requested") else ""),
                  markup=False)


@app.command("events", help="a job's events, oldest first")
def events(ctx: typer.Context, job_id: str,
           limit: Annotated[int, typer.Option(help="the last this many")] = 100,
           follow: Annotated[bool, typer.Option("--follow", "-f", help="every event, then new ones until the job "
                                                "ends (with --json: one JSON object a line)")]
           = False, as_json: Json = False) -> None:
    api = client(ctx)
    if follow:
        for event in api.follow_events(job_id):
            print_json_line(event) if as_json else out.print(event_line(event))
        return
    found = api.events(job_id)[-limit:]
    if as_json:
        print_json(found)
        return
    for event in found:
        out.print(event_line(event))


METRIC_COLUMNS = ("step", "epoch", "loss", "valid_loss", "learning_rate", "grad_norm", "tokens_per_second",
                  "gpu_memory_mb")


@app.command("metrics", help="a job's recorded metrics by step; --plot draws the loss curve")
def metrics(ctx: typer.Context, job_id: str,
            plot_it: Annotated[bool, typer.Option("--plot", help="draw the loss (and validation loss) curve")]
            = False,
            width: Annotated[int, typer.Option(help="the plot's width in characters")] = 60,
            height: Annotated[int, typer.Option(help="the plot's height in lines")] = 12,
            as_json: Json = False) -> None:
    series = client(ctx).job_metrics(job_id)
    points = series.get("data", [])
    if as_json:
        print_json(series)
        return
    if not plot_it:
        out.print(table(METRIC_COLUMNS, ([number(p.get(c)) if isinstance(p.get(c), float) else p.get(c)
                                          for c in METRIC_COLUMNS] for p in points)))
        return
    for name, key in (("training loss", "loss"), ("validation loss", "valid_loss")):
        found = [(p["step"], p[key]) for p in points if p.get(key) is not None]
        if found or key == "loss":
            out.print("\n".join(plot(found, width=width, height=height, title=f"{job_id}: {name}")),
                      markup=False, highlight=False)

