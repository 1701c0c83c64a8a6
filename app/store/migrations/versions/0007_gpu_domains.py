"""GPU topology domains

Each GPU's NVLink / PCIe-switch domain as its worker found it, so multi-GPU experiments can be
placed within one domain.

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('gpus') as batch:
        batch.add_column(sa.Column('domain', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gpus') as batch:
        batch.drop_column('domain')
