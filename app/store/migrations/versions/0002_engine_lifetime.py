"""engine identity and failure kind on attempts; fenced and quarantined GPUs

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.add_column(sa.Column('failure_kind', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('engine', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('engine_gone_at', sa.DateTime(), nullable=True))
        batch.create_index('ix_attempts_host_engine_gone', ['host', 'engine_gone_at'])
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('failure_kind', sa.String(length=40), nullable=True))
    with op.batch_alter_table('gpus') as batch:
        batch.add_column(sa.Column('fenced_by', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('fenced_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('quarantined_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('quarantine_reason', sa.String(length=300), nullable=True))
        batch.create_foreign_key('fk_gpus_fenced_by_attempts', 'attempts', ['fenced_by'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('gpus') as batch:
        batch.drop_constraint('fk_gpus_fenced_by_attempts', type_='foreignkey')
        for column in ('quarantine_reason', 'quarantined_at', 'fenced_at', 'fenced_by'):
            batch.drop_column(column)
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('failure_kind')
    with op.batch_alter_table('attempts') as batch:
        batch.drop_index('ix_attempts_host_engine_gone')
        for column in ('engine_gone_at', 'engine', 'failure_kind'):
            batch.drop_column(column)
