"""Web sessions held server-side, shared rate-limit counters, address ownership start.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("expires", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "released_addresses",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("released", sa.Float, nullable=False),
    )
    with op.batch_alter_table("addresses") as batch:
        batch.add_column(sa.Column("since", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("addresses") as batch:
        batch.drop_column("since")
    for table in ("released_addresses", "rate_limits", "web_sessions"):
        op.drop_table(table)
