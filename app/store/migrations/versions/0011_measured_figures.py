"""Measured figures of an experiment, apart from the score that ranks it

`measured`: each of the task's objectives' figure in its unit, without the SLO penalty
(what pages and charts plot, and what a multi-objective task's Pareto set is made of);
`penalty`: the SLO penalty the ranking score carries. Existing experiments have neither:
their score stands in for the figure.

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('measured', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('penalty', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('penalty')
        batch.drop_column('measured')
