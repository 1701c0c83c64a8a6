"""coordinator pass timings, for the metrics

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pass_timings',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('finished_at', sa.DateTime(), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('placed', sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('pass_timings')
