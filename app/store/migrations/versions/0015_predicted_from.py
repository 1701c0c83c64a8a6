"""Renewed predictions: how many results a task's waiting experiments were last ordered from

`tasks.predicted_from`: the count of its succeeded experiments when the coordinator last
renewed its waiting experiments' predicted lengths and their longest-first order; a pass
renews them only when more have succeeded since (its history is read only then).

Revision ID: 0015
Revises: 0014
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('predicted_from', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('predicted_from')
