from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import DEFAULT_USER, Base, TimestampMixin


class File(TimestampMixin, Base):
    """An uploaded dataset. `status`: uploaded → processed | error (with `errors`)."""

    __tablename__ = "files"
    # A tenant's page, newest first (common/services/queries.py `page_statement`), is a range of this index: it
    # reads the page's rows and no other tenant's, however many those are.
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),
                      Index("ix_files_tenant_id_created_at", "tenant_id", "created_at", "id"),
                      Index("ix_files_tenant_id_user_name", "tenant_id", "user_name"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_name: Mapped[str] = mapped_column(String(64), default=DEFAULT_USER, server_default=DEFAULT_USER)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32), default="fine-tune")
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    storage_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    format: Mapped[str | None] = mapped_column(String(32), default=None)
    stages: Mapped[list[str]] = mapped_column(JSONB, default=list)
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # DELETE /files/{id}: its bytes are removed; the row stays (finished jobs name it) and reads as not found
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
