"""each task's waiting experiments by fair-share tag

A pass that places an experiment moves the scheduler's virtual time to its task's position:
the smaller of the tag placed and the task's smallest tag still waiting (a head that waits
while backfill places a later tag). This index finds that tag in one seek per task, instead
of reading the task's whole history on the path between one experiment's end and the next
one's start.

Revision ID: 0016
Revises: 0015
"""
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_experiments_task_waiting', 'experiments', ['task_id', 'state', 'share_tag'])


def downgrade() -> None:
    op.drop_index('ix_experiments_task_waiting', table_name='experiments')
