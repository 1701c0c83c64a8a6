"""experiments carry their task's priority; the waiting queue's index

The scheduler reads the head of the waiting queue for each GPU count (pending, GPUs needed,
priority first, then age), so its cost does not grow with the backlog. The priority is
copied from the task (and kept in step when the task's priority changes) so that one index
serves that order.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE experiments SET priority = "
               "(SELECT tasks.priority FROM tasks WHERE tasks.id = experiments.task_id)")
    op.create_index('ix_experiments_waiting', 'experiments',
                    ['state', 'gpus_needed', sa.text('priority DESC'), 'id'])


def downgrade() -> None:
    op.drop_index('ix_experiments_waiting', table_name='experiments')
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('priority')
