"""Placement by fit: the devices workers have registered, and what each job needs

- `workers`: one row per device a worker registered (per GPU, or one per host for CPU workers), kept across
  restarts: its pool, kind, memory it may use, compute capability, bf16, bitsandbytes and flash-attention.
- `jobs.estimate`: the peak-memory estimate per device kind (common/memory_estimate.py) and, once it ran, the
  measured peak; `jobs.needs_cuda_bytes` / `needs_cpu_bytes` / `needs_bitsandbytes` / `needs_flash_attention`:
  what a device must have to run it, read by the claim.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 00:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("device_name", sa.String(256), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("compute_capability", sa.String(16), nullable=True),
        sa.Column("bf16", sa.Boolean(), nullable=False),
        sa.Column("bitsandbytes", sa.Boolean(), nullable=False),
        sa.Column("flash_attention", sa.Boolean(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workers_queue", "workers", ["queue"])
    op.add_column("jobs", sa.Column("estimate", postgresql.JSONB(), nullable=True))
    op.add_column("jobs", sa.Column("needs_cuda_bytes", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("needs_cpu_bytes", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("needs_bitsandbytes", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("jobs", sa.Column("needs_flash_attention", sa.Boolean(), nullable=False,
                                    server_default=sa.false()))


def downgrade() -> None:
    for column in ("needs_flash_attention", "needs_bitsandbytes", "needs_cpu_bytes", "needs_cuda_bytes", "estimate"):
        op.drop_column("jobs", column)
    op.drop_table("workers")
