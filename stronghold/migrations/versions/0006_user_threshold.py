"""A user's own spam threshold (within the admin's bounds): users.spam_threshold.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("spam_threshold", sa.Float, nullable=True))


def downgrade() -> None:
    op.drop_column("users", "spam_threshold")
