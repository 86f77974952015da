"""Pause and resume (OpenAI's fine_tuning.jobs.pause / resume): a running job asked to pause checkpoints and holds
in status `paused` (common/state.py); the flag its owner watches

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 01:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("jobs", "pause_requested")
