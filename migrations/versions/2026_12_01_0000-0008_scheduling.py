"""The queue is decided in Postgres: job priority and queue, tenant weights, and one row per run of a job

- `jobs.priority` (0 low, 1 normal, 2 high) and `jobs.queue` (the pool of workers the job waits for, the broker
  queue of the API that created it); `ix_jobs_claimable` holds only queued jobs, in the order a claim reads them.
- `jobs.preempt_requested` / `jobs.preempted_at`: a running job asked to checkpoint and step aside, and when it
  last did.
- `tenants.weight`: its share of GPU time against the other tenants (default 1).
- `job_runs`: one row per claim (attempt) of a job, from its start to its end, the last heartbeat in between. Fair
  share (decayed use) and GPU-hour quotas are both read from it (common/scheduling/usage.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="1"))
    op.add_column("jobs", sa.Column("queue", sa.String(200), nullable=False, server_default="tunequeue.jobs"))
    op.add_column("jobs", sa.Column("preempt_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("jobs", sa.Column("preempted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_claimable", "jobs",
                    ["queue", "tenant_id", "user_name", "priority", "created_at", "id"],
                    postgresql_where=sa.text("status = 'queued'"))
    op.add_column("tenants", sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("worker", sa.String(256), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.UniqueConstraint("job_id", "attempt"),
    )
    op.create_index("ix_job_runs_tenant_id_ended_at", "job_runs", ["tenant_id", "ended_at"])
    op.create_index("ix_job_runs_ended_at", "job_runs", ["ended_at"])
    op.create_index("ix_job_runs_queue_tenant_id_started_at", "job_runs", ["queue", "tenant_id", "started_at"])


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_column("tenants", "weight")
    op.drop_index("ix_jobs_claimable", table_name="jobs")
    for column in ("preempted_at", "preempt_requested", "queue", "priority"):
        op.drop_column("jobs", column)
