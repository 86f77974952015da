"""Files can be deleted (DELETE /files/{id}): `deleted_at`, the row kept because finished jobs still name it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 00:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("files", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "deleted_at")
