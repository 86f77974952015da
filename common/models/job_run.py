from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base


class JobRun(Base):
    """One claim of a job (an attempt), from start to end: what fair share and GPU-hour quotas count
    (common/scheduling/usage.py). `last_seen_at` moves with the lease's heartbeat; a run whose worker was lost ends
    at its last heartbeat, not at the moment the reaper noticed."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),
                      Index("ix_job_runs_tenant_id_ended_at", "tenant_id", "ended_at"),
                      Index("ix_job_runs_ended_at", "ended_at"),
                      Index("ix_job_runs_queue_tenant_id_started_at", "queue", "tenant_id", "started_at"))

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_name: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(200))
    worker: Mapped[str] = mapped_column(String(256))
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    end_reason: Mapped[str | None] = mapped_column(String(32), default=None)
