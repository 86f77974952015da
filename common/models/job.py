from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
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
                      Index("ix_jobs_tenant_id_user_name", "tenant_id", "user_name"))

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
