"""A tenant's pages of jobs and files read only its own rows

`GET /jobs` and `GET /files` list a tenant's rows newest first. With an index on `tenant_id` and another on
`created_at`, Postgres either walked `created_at` backwards and skipped every other tenant's newer rows, or took all
of the tenant's rows and sorted them: either way the cost grew with the table. An index on (tenant_id, created_at,
id) makes a page a range scan of its own rows; it replaces the index on `tenant_id` alone, which is its prefix.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 18:15:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("jobs", "files"):
        op.create_index(f"ix_{table}_tenant_id_created_at", table, ["tenant_id", "created_at", "id"])
        op.drop_index(f"ix_{table}_tenant_id", table_name=table)


def downgrade() -> None:
    for table in ("jobs", "files"):
        op.create_index(f"ix_{table}_tenant_id", table, ["tenant_id"])
        op.drop_index(f"ix_{table}_tenant_id_created_at", table_name=table)
