"""Early stopping: why an experiment's remaining load levels were skipped, and why a task
created no more experiments (app.domain.stopping's reason keys). A stopped experiment
succeeded, with its score measured at the deciding level: the reason tells it apart from one
that ran every level, never from a failure.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('stop_reason', sa.String(40), nullable=True))
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('stop_reason', sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('stop_reason')
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('stop_reason')
