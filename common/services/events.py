"""Job events, metrics series, checkpoints and the live-progress view: the read side. Events are written by
common/state.py (`add_event`), under the job's row lock, so that a job's events commit in `seq` order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from common.errors import InvalidRequest
from common.model_names import checkpoint_model_name, fine_tuned_model_name
from common.models import Checkpoint, Job, JobEvent
from common.services.queries import paginate

MAX_METRICS_LIMIT = 10_000
STREAM_BATCH = 500

# The keys docs/progress.md promises in `progress`; the rest (grad_norm, trained_tokens, valid_loss,
# valid_mean_token_accuracy, valid_preference_accuracy, peak_memory_mb, process_rss_mb, attempt, sampled_at) are
# passed through when a worker reported them.
PROGRESS_KEYS = ("step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_second", "eta_seconds")


# OpenAI's event levels are info, warn and error; workers and the state machine write `warning`, which the job_events
# rows keep (and the worker's logs say): the public object says it OpenAI's way.
PUBLIC_LEVELS = {"warning": "warn"}


def event_public(e: JobEvent) -> dict[str, Any]:
    """The OpenAI `fine_tuning.job.event` object, plus `seq` (the SSE id, for ordering and resuming)."""
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": int(e.created_at.timestamp()),
            "level": PUBLIC_LEVELS.get(e.level, e.level), "message": e.message, "type": e.type, "data": e.data,
            "seq": e.seq}


def list_events(session: Session, job_id: str, *, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    """Newest first, like OpenAI's; `after` is the id of the last event of the previous page."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        anchor = session.scalar(select(JobEvent.seq).where(JobEvent.id == after, JobEvent.job_id == job_id))
        if anchor is None:
            raise InvalidRequest(f"`after` names no event of this job: {after!r}", param="after",
                                 code="invalid_cursor")
        stmt = stmt.where(JobEvent.seq < anchor)
    rows = list(session.scalars(stmt.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def events_since(session: Session, job_id: str, last_seq: int, limit: int = STREAM_BATCH) -> list[JobEvent]:
    """Oldest first: the events a stream that has sent up to `last_seq` still owes."""
    return list(session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > last_seq)
        .order_by(JobEvent.seq).limit(limit)
    ))


def parse_last_event_id(value: str | None, *, param: str) -> int:
    """The SSE resume point: the `seq` of the last event the client has. Absent: from the beginning."""
    if value is None or value.strip() == "":
        return 0
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise InvalidRequest(
            f"{param} must be the id of an event this stream sent (a non-negative integer); got {value!r}",
            param=param, code="invalid_last_event_id")
    return int(text)


def progress_view(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `progress` object of a job: every key of docs/progress.md present (null when not known yet), `gpus`
    a list."""
    if not raw:
        return None
    view: dict[str, Any] = {key: raw.get(key) for key in PROGRESS_KEYS}
    view.update({k: v for k, v in raw.items() if k not in view})
    gpus = raw.get("gpus")
    view["gpus"] = gpus if isinstance(gpus, list) else []
    view["updated_at"] = raw.get("updated_at") or raw.get("sampled_at")
    return view


# --- metrics series ---------------------------------------------------------------------------------------

def gpu_memory_mb(gpus: Any) -> float | None:
    """The job's GPU memory: what its processes hold when NVML can attribute it, else what the cards use."""
    if not isinstance(gpus, list) or not gpus:
        return None
    cards = [g for g in gpus if isinstance(g, dict)]
    own = [g.get("process_memory_mb") for g in cards]
    if own and all(isinstance(v, int | float) for v in own):
        return round(sum(float(v) for v in own if v is not None), 1)
    used = [float(g["memory_used_mb"]) for g in cards if isinstance(g.get("memory_used_mb"), int | float)]
    return round(sum(used), 1) if used else None


def metric_point(e: JobEvent) -> dict[str, Any]:
    d = e.data or {}
    return {
        "step": d.get("step"), "epoch": d.get("epoch"), "loss": d.get("loss"), "valid_loss": d.get("valid_loss"),
        "valid_mean_token_accuracy": d.get("valid_mean_token_accuracy"),
        "valid_preference_accuracy": d.get("valid_preference_accuracy"), "learning_rate": d.get("learning_rate"),
        "grad_norm": d.get("grad_norm"), "tokens_per_second": d.get("tokens_per_second"),
        "trained_tokens": d.get("trained_tokens"), "gpu_memory_mb": gpu_memory_mb(d.get("gpus")),
        "peak_memory_mb": d.get("peak_memory_mb"), "process_rss_mb": d.get("process_rss_mb"),
        "attempt": e.attempt, "created_at": int(e.created_at.timestamp()),
    }


def metrics_series(session: Session, job_id: str, *, after_step: int | None, limit: int
                   ) -> tuple[list[dict[str, Any]], bool]:
    """One point per recorded step, ascending. After a requeue the new attempt resumes from a checkpoint and
    reports some steps again: a step's point is the newest attempt's, and what an older attempt reported past
    the step a newer one resumed from is left out (it was thrown away with that attempt)."""
    if not 1 <= limit <= MAX_METRICS_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_METRICS_LIMIT}; got {limit}", param="limit")
    if after_step is not None and after_step < 0:
        raise InvalidRequest(f"after_step must be ≥ 0; got {after_step}", param="after_step")
    step = JobEvent.data["step"].as_integer()
    base = [JobEvent.job_id == job_id, JobEvent.type == "metrics", step.is_not(None)]
    starts: dict[int, int] = {  # attempt → the first step it reported
        int(a): int(s) for a, s in session.execute(
            select(JobEvent.attempt, func.min(step)).where(*base).group_by(JobEvent.attempt)).all()}
    attempts = sorted(starts)
    valid = []
    for i, attempt in enumerate(attempts):
        later = [starts[a] for a in attempts[i + 1:]]
        valid.append(and_(JobEvent.attempt == attempt, step < min(later)) if later else JobEvent.attempt == attempt)
    stmt = select(JobEvent).where(*base)
    if valid:
        stmt = stmt.where(or_(*valid))
    if after_step is not None:
        stmt = stmt.where(step > after_step)
    # Within one attempt a step is recorded once; keep the newest should a worker have written it twice.
    rows = list(session.scalars(
        stmt.ext(distinct_on(step)).order_by(step, JobEvent.seq.desc()).limit(limit + 1)
    ))
    points = [metric_point(e) for e in rows[:limit]]
    return points, len(rows) > limit


# --- checkpoints ------------------------------------------------------------------------------------------

def checkpoint_public(c: Checkpoint, job: Job) -> dict[str, Any]:
    """The OpenAI `fine_tuning.job.checkpoint` object. Metrics use OpenAI's names; a worker may record either
    those or the Trainer's (loss, eval_loss, …), and any other metric it recorded is passed through."""
    m = dict(c.metrics or {})
    metrics: dict[str, Any] = {
        "step": m.pop("step", c.step),
        "train_loss": m.pop("train_loss", m.pop("loss", None)),
        "train_mean_token_accuracy": m.pop("train_mean_token_accuracy", m.pop("mean_token_accuracy", None)),
        "valid_loss": m.pop("valid_loss", m.pop("eval_loss", None)),
        "valid_mean_token_accuracy": m.pop("valid_mean_token_accuracy", m.pop("eval_mean_token_accuracy", None)),
        "full_valid_loss": m.pop("full_valid_loss", None),
        "full_valid_mean_token_accuracy": m.pop("full_valid_mean_token_accuracy", None),
    }
    metrics.update(m)
    model = fine_tuned_model_name(job.base_model, (job.spec or {}).get("suffix"), job.id)
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": int(c.created_at.timestamp()),
            "fine_tuned_model_checkpoint": checkpoint_model_name(model, c.step), "step_number": c.step,
            "metrics": metrics, "fine_tuning_job_id": job.id}


def list_checkpoints(session: Session, job: Job, *, after: str | None, limit: int
                     ) -> tuple[list[Checkpoint], bool]:
    """Newest first, like OpenAI's; `after` is the id of the last checkpoint of the previous page."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return paginate(session, stmt, Checkpoint, after=after, limit=limit, tenant_id=job.tenant_id)
