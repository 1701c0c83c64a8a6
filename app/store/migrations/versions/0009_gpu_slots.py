"""Slots per GPU

A worker may split each GPU into several slots (one engine each, each with its share of the
memory): one ledger row per slot, so (host, index) is no longer unique but (host, index, slot)
is. Existing rows become slot 0 of 1.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# The old constraint was created without a name: PostgreSQL named it itself, SQLite keeps
# none, so batch mode is told what to call it while it rebuilds the table.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s"}


def _old_unique() -> str:
    return "gpus_host_index_key" if op.get_bind().dialect.name == "postgresql" else "uq_gpus_host_index"


def upgrade() -> None:
    with op.batch_alter_table('gpus', naming_convention=_NAMING) as batch:
        batch.add_column(sa.Column('slot', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('slots', sa.Integer(), nullable=False, server_default='1'))
        batch.drop_constraint(_old_unique(), type_='unique')
        batch.create_unique_constraint('uq_gpus_host_index_slot', ['host', 'index', 'slot'])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM gpus WHERE slot > 0"))
    with op.batch_alter_table('gpus', naming_convention=_NAMING) as batch:
        batch.drop_constraint('uq_gpus_host_index_slot', type_='unique')
        batch.create_unique_constraint(_old_unique(), ['host', 'index'])
        batch.drop_column('slots')
        batch.drop_column('slot')
