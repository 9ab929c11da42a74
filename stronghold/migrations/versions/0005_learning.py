"""The learning ledger (learned_messages) and the shared model's history (model_events).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "learned_messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(320), nullable=False, index=True),
        sa.Column("label", sa.Boolean, nullable=True),
        sa.Column("applied", sa.Boolean, nullable=True),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("who", sa.String(320), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False, index=True),
        sa.Column("tokens", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("content_hash", "scope", name="uq_learned_message"),
    )
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("who", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_events")
    op.drop_table("learned_messages")
