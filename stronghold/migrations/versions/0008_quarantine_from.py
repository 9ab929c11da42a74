"""The header From of each held copy: quarantine_items.header_from.

The Junk page, the digest and "release and always allow" name the From address
people recognise, with the envelope sender beside it where it differs.  NULL:
held before this column existed (the web UI reads the From from the held copy).

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quarantine_items", sa.Column("header_from", sa.String(320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantine_items") as batch:
        batch.drop_column("header_from")
