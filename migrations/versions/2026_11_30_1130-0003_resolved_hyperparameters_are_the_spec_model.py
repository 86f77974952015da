"""resolved hyperparameters are the spec's model

Jobs stored before the one hyperparameter model (common/schemas/job_spec.py) carry two keys in
`spec.resolved_hyperparameters` that the model does not have and refuses: `total_steps` and `micro_batch_size`
(the micro batch is batch_size / gradient_accumulation_steps; the step count is the child's to decide). Drop
them, so that GET /jobs and the worker parse those jobs. The downgrade has nothing to restore: the older code
did not need them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:30:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE jobs SET spec = jsonb_set(spec, '{resolved_hyperparameters}', "
        "(spec->'resolved_hyperparameters') - 'total_steps' - 'micro_batch_size') "
        "WHERE spec ? 'resolved_hyperparameters'"
    )


def downgrade() -> None:
    pass
