"""The learning ledger (learned_messages), the shared model's history (model_events), the published
model every node reads (model_versions), which version each node runs (model_nodes) and users'
personal layers (personal_layers).

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
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("published", sa.Float, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, index=True),
        sa.Column("passport", sa.Text, nullable=False),
        sa.Column("table", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "model_nodes",
        sa.Column("node", sa.String(255), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
        sa.Column("error", sa.String(300), nullable=False),
    )
    op.create_table(
        "personal_layers",
        sa.Column("scope", sa.String(320), primary_key=True),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("personal_layers")
    op.drop_table("model_nodes")
    op.drop_table("model_versions")
    op.drop_table("model_events")
    op.drop_table("learned_messages")
