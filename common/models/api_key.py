from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import DEFAULT_USER, Base, TimestampMixin


class ApiKey(TimestampMixin, Base):
    """A key is shown once; only its sha256 is kept. `role`: 'member', 'admin' (manages its tenant's keys) or
    'operator' (the platform's: every tenant's jobs on /workers, /metrics; made by the CLI only)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    # the user within the tenant who holds the key; what the key makes records it
    user_name: Mapped[str] = mapped_column(String(64), default=DEFAULT_USER, server_default=DEFAULT_USER)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
