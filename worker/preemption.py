"""Preemption: when a job that the policy puts first (a high-priority job, or one of a tenant below its fair share)
has waited `preempt_after_seconds` while a low-priority job runs, that low job is asked to step aside
(`preempt_requested`). Its owner sees the flag, has the child checkpoint and stop (SIGUSR1, as on shutdown), and
requeues it with a `preempted` event (worker/runner.py, common/state.py `preempt`); it resumes from that checkpoint
when it is claimed again. A job is preempted at most once per `preempt_interval_minutes`.

One victim per pass (maintenance runs every few seconds): the freed device goes to whichever job the claim then
finds best, and the next pass looks again. The victim is the low job the waiting one goes before that started
last, so the least work since a checkpoint is at stake."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common import state
from common.models import Job
from common.scheduling.claim import Tenants, aging, candidates, claimable, weighing
from common.scheduling.policy import Candidate, choose
from common.schemas.job_spec import PRIORITIES
from common.settings import Settings

log = logging.getLogger("tunequeue.preemption")


def _preemptible(session: Session, settings: Settings, now: datetime) -> list[Job]:
    """Running low-priority jobs of this pool that have not been asked already nor preempted lately, newest first."""
    recently = now - timedelta(minutes=settings.preempt_interval_minutes)
    return list(session.scalars(
        select(Job).where(Job.queue == settings.celery_queue, Job.status == "running",
                          Job.priority == PRIORITIES["low"], ~Job.preempt_requested, ~Job.cancel_requested,
                          or_(Job.preempted_at.is_(None), Job.preempted_at < recently))
        .order_by(Job.started_at.desc())))


def preemption_pass(session: Session, settings: Settings, now: datetime | None = None) -> str | None:
    """Ask at most one running low job to step aside; returns its id, or None."""
    now = now or state.now()
    patience = timedelta(seconds=settings.preempt_after_seconds)
    if not any(now - c.created_at >= patience for c in candidates(session, settings.celery_queue)):
        return None
    victims = _preemptible(session, settings, now)
    if not victims:
        return None
    found, _ = claimable(session, settings.celery_queue, settings, now)
    waiting = [c for c in found if now - c.created_at >= patience]
    tenants = Tenants.read(session, {c.tenant_id for c in waiting} | {v.tenant_id for v in victims},
                           settings.celery_queue)
    rules, weights = aging(settings), weighing(session, tenants, settings, now)
    best = choose(waiting, weights, rules, now)
    if best is None:
        return None
    for victim in victims:
        as_candidate = Candidate(job_id=victim.id, tenant_id=victim.tenant_id, user_name=victim.user_name,
                                 priority=victim.priority, created_at=victim.created_at)
        if choose([best, as_candidate], weights, rules, now) == best:
            job = state.lock_job(session, victim.id)
            if job is None or job.status != "running" or job.preempt_requested:
                continue
            job.preempt_requested = True
            state.add_event(session, job, "Asked to checkpoint and step aside: a job that goes first under the "
                            "scheduling policy (higher priority, or an organization below its fair share) is "
                            "waiting; this one resumes from its checkpoint later", level="warning")
            log.warning("preempting %s for %s", victim.id, best.job_id)
            return victim.id
    return None
