"""Fill quarantine_items.header_from for items held before 0008 added it.

Until now the Junk page and ``quarantine ls`` decompressed and parsed each such
item's copy on every view; after this, every item has its From (or "" where its
copy is unreadable) and the copies are read once, here.  Data only: the
downgrade leaves the values, which 0008's schema accepts.

Revision ID: 0009
"""

from alembic import op

from stronghold.store.backfill import quarantine_header_from

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    quarantine_header_from(op.get_bind())


def downgrade() -> None:
    pass
