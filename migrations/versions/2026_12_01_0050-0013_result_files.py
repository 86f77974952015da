"""A succeeded job's result files (OpenAI's `result_files`): the ids of the files the worker wrote for it, today its
step metrics as CSV (worker/result_files.py)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 00:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("result_files", postgresql.JSONB(), nullable=False,
                                    server_default=sa.text("'[]'::jsonb")))


def downgrade() -> None:
    op.drop_column("jobs", "result_files")
