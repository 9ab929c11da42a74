"""Quarantine: compressed content-addressed blobs, one item per recipient; per-user digest setting.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine_blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("touched", sa.Float, nullable=False),
    )
    op.create_table(
        "quarantine_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("queue_id", sa.String(40), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("category", sa.String(10), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("trace", sa.Text, nullable=False),
        sa.Column("virus", sa.String(200), nullable=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("quarantine_blobs.sha256"), nullable=False,
                  index=True),
        sa.Column("released", sa.Float, nullable=True),
        sa.Column("released_by", sa.String(320), nullable=True),
        sa.Column("delivered", sa.Float, nullable=True),
    )
    op.create_index("ix_quarantine_items_recipient_ts", "quarantine_items", ["recipient", "ts"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("digest", sa.String(10), nullable=False, server_default="daily"))
        batch.add_column(sa.Column("digest_sent", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("digest_sent")
        batch.drop_column("digest")
    op.drop_table("quarantine_items")
    op.drop_table("quarantine_blobs")
