"""Tenants carry the quotas a platform operator sets on them

`quotas`: a JSON object of limit name → value (`{"max_queued": 10}`); a limit that is absent does not apply. Which
limits exist and where each is enforced: common/services/quotas.py.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 21:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("quotas", postgresql.JSONB(), nullable=False, server_default="{}"))


def downgrade() -> None:
    op.drop_column("tenants", "quotas")
