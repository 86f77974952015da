"""Multi-device jobs (issue 17): a job's `resources.devices` as a column the claim filters on (`jobs.needs_devices`),
and how many devices the worker that registered a device trains one job on (`workers.devices`)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 01:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("needs_devices", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("workers", sa.Column("devices", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    op.drop_column("workers", "devices")
    op.drop_column("jobs", "needs_devices")
