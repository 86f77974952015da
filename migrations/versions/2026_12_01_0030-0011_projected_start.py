"""When will it start: a queued job's position under the real policy and its estimated start, projected by the
maintenance pass (common/scheduling/forecast.py)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 00:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue_position", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("estimated_start_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "estimated_start_at")
    op.drop_column("jobs", "queue_position")
