"""fair share between tasks of equal priority

Start-time fair queuing: each experiment gets a tag in expected GPU-seconds when it is created
(`experiments.share_tag`, from its task's `share_finish`), the waiting queue is served by
priority, then tag; the scheduler keeps the highest tag it has served (`locks.value`), where an
idle or new task starts. Existing experiments get tag 0 (their order stays by age).

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('share_finish', sa.Float(), nullable=True))
    with op.batch_alter_table('locks') as batch:
        batch.add_column(sa.Column('value', sa.Float(), nullable=True))
    op.drop_index('ix_experiments_waiting', table_name='experiments')
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('share_tag', sa.Float(), nullable=False, server_default='0'))
    op.create_index('ix_experiments_waiting', 'experiments',
                    ['state', 'gpus_needed', sa.text('priority DESC'), 'share_tag', 'id'])


def downgrade() -> None:
    op.drop_index('ix_experiments_waiting', table_name='experiments')
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('share_tag')
    op.create_index('ix_experiments_waiting', 'experiments',
                    ['state', 'gpus_needed', sa.text('priority DESC'), 'id'])
    with op.batch_alter_table('locks') as batch:
        batch.drop_column('value')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('share_finish')
