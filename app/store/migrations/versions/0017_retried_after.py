"""an operator's retry gives an experiment its attempts again

`experiments.retried_after`: the attempt number when `retry_failed` put the experiment back
in line (0: never). The attempts that `max_attempts` caps (a lost worker, a busy host) are
counted after it; before it, a retried experiment that had used up its attempts failed again
at its first such end.

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('experiments', sa.Column('retried_after', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    # Not a batch operation: on SQLite that rebuilds the table, and dropping `experiments`
    # with foreign keys on would cascade to its attempts. SQLite >= 3.35 (the store's
    # minimum) drops a column in place.
    op.execute('ALTER TABLE experiments DROP COLUMN retried_after')
