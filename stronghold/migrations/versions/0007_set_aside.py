"""Marks set aside by a model rollback: learned_messages.set_aside (the shared model keeps, for
such a message, what the restored model held, until an operator readmits or forgets it).

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("learned_messages") as batch:
        batch.add_column(sa.Column("set_aside", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("learned_messages") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("set_aside")
