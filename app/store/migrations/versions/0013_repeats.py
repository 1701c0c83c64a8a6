"""Repeats: the top configurations measured again with other seeds

`repeat_of`: the experiment whose configuration this one measures again (a repeat is not
part of the search: the strategy never sees it); `seed`: the benchmark client's seed (request
order and arrival times), 0 for every experiment of the search.

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('repeat_of', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('seed', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('seed')
        batch.drop_column('repeat_of')
