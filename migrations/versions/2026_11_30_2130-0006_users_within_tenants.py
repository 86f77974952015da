"""Keys, jobs and files name the user who holds or made them, within the tenant

A key belongs to a user name inside its tenant (`tunequeue admin create-key --user alice`); the jobs and files a key
makes record that name, so that lists can be filtered by user (and, later, GPU time shared between users). Rows from
before keep working as user "default".

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("api_keys", "jobs", "files")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("user_name", sa.String(64), nullable=False, server_default="default"))
    op.create_index("ix_jobs_tenant_id_user_name", "jobs", ["tenant_id", "user_name"])
    op.create_index("ix_files_tenant_id_user_name", "files", ["tenant_id", "user_name"])


def downgrade() -> None:
    op.drop_index("ix_files_tenant_id_user_name", table_name="files")
    op.drop_index("ix_jobs_tenant_id_user_name", table_name="jobs")
    for table in TABLES:
        op.drop_column(table, "user_name")
