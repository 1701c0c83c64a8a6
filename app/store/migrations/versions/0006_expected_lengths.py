"""expected experiment lengths and promised starts, for reservations with backfill

`tasks.expected_experiment_s`: a moving average of the task's succeeded experiments' lengths,
from which the scheduler predicts when running experiments end. `experiments.promised_start`:
the start the scheduler first promised a reserved experiment, to bound how far it may slip.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('expected_experiment_s', sa.Float(), nullable=True))
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('promised_start', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('promised_start')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('expected_experiment_s')
