from typing import Any

from sqlalchemy import Float, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base, TimestampMixin


class Tenant(TimestampMixin, Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # limit name → value, set by a platform operator (common/services/quotas.py); an absent limit does not apply
    quotas: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    # its share of GPU time against the other tenants' (common/scheduling/policy.py); equal by default
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
