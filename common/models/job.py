from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import DEFAULT_USER, Base, TimestampMixin


class Job(TimestampMixin, Base):
    """A fine-tuning job. Postgres is its truth; `attempt` is the fencing epoch of its current owner."""

    __tablename__ = "jobs"
    # A tenant's page, newest first (common/services/queries.py `page_statement`), is a range of this index: it
    # reads the page's rows and no other tenant's, however many those are.
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),
                      Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at", "id"),
                      Index("ix_jobs_tenant_id_user_name", "tenant_id", "user_name"),
                      # what a claim reads (common/scheduling/claim.py): the queued jobs of one worker pool only
                      Index("ix_jobs_claimable", "queue", "tenant_id", "user_name", "priority", "created_at", "id",
                            postgresql_where=text("status = 'queued'")))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_name: Mapped[str] = mapped_column(String(64), default=DEFAULT_USER, server_default=DEFAULT_USER)
    base_model: Mapped[str] = mapped_column(String(256))
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(24), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    worker: Mapped[str | None] = mapped_column(String(256), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_progress: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    idempotency_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # 0 low, 1 normal, 2 high (common/scheduling/policy.py: PRIORITIES); it orders jobs within a tenant only
    priority: Mapped[int] = mapped_column(SmallInteger, default=1, server_default="1")
    # the pool of workers it waits for: the broker queue (settings.celery_queue) of the API that created it
    queue: Mapped[str] = mapped_column(String(200), default="tunequeue.jobs", server_default="tunequeue.jobs")
    preempt_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    preempted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # POST /jobs/{id}/pause on a running job: its owner checkpoints and holds it in `paused` (common/state.py `hold`)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # placement by fit (common/scheduling/placement.py): the estimate per device kind (+ the measured peak), and
    # what a device must have to run the job, which the claim reads
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    needs_cuda_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    needs_cpu_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    needs_bitsandbytes: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    needs_flash_attention: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    needs_devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # spec.resources.devices
    # while queued: its place under the real policy and its estimated start (common/scheduling/forecast.py)
    queue_position: Mapped[int | None] = mapped_column(Integer, default=None)
    estimated_start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # once succeeded: the files the worker wrote for it (its step metrics as CSV: worker/result_files.py)
    result_files: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default=text("'[]'::jsonb"))
