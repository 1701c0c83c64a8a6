"""Per-experiment expected lengths

Each new experiment's predicted length from its task's measured experiments and its own
parameters (app.domain.lengths), read by the scheduler's reservation. Existing experiments
have none: the task's moving average stands in, as before.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('expected_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('expected_s')
