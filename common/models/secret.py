"""A tenant's secrets (common/services/secrets.py): tracker credentials, encrypted at rest with
TUNEQUEUE_SECRETS_KEY (common/secrets_box.py). `ciphertext` is a Fernet token: the value never reaches the table
in clear, and no route reads it back; only a worker decrypts it, into the environment of a training child whose
job names the tracker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base, utcnow


class TenantSecret(Base):
    __tablename__ = "tenant_secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
