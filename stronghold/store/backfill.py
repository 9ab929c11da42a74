"""One-time fills of columns added after rows already existed (run by migrations).

Each reads the schema through its own minimal table definition, not the ORM
classes of stronghold.store.tables: a migration runs against the schema of its
revision, whatever the classes hold by then.
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from sqlalchemy import Connection

from stronghold.headers import shorten_from
from stronghold.store.quarantine import MAX_HEADER_BYTES, from_header

BATCH = 200  # held copies read per statement: at most BATCH * ~257 KiB in memory
_BLOBS = sa.table("quarantine_blobs", sa.column("sha256", sa.String), sa.column("data", sa.LargeBinary))
_ITEMS = sa.table("quarantine_items", sa.column("sha256", sa.String), sa.column("header_from", sa.String))
# Deflate never grows data by more than a few bytes per 64 KiB block, so this many bytes of a
# compressed copy hold at least its first MAX_HEADER_BYTES, all that from_header reads.
_PREFIX = MAX_HEADER_BYTES + 1024


def held_from(prefix: bytes) -> str:
    """The From header (shortened to its column's 320 characters) of a held copy whose
    compressed bytes begin with ``prefix``; "" when they do not decompress."""
    try:
        head = zlib.decompressobj().decompress(prefix, MAX_HEADER_BYTES)
    except zlib.error:
        return ""
    return shorten_from(from_header(head))


def quarantine_header_from(conn: Connection, batch: int = BATCH) -> int:
    """Fill quarantine_items.header_from where it is NULL (items held before migration 0008)
    from the copy each item points at; returns the items filled.

    Blobs are read ``batch`` at a time in key order, each only up to its header block, and
    each is parsed once for all the items that share it.  A copy that is corrupt gets "",
    as does an item whose copy is missing, so the fill always ends and never runs again.
    """
    missing = _ITEMS.c.header_from.is_(None)
    filled = int(conn.execute(sa.select(sa.func.count()).select_from(_ITEMS).where(missing)).scalar() or 0)
    last = ""
    while filled:  # keyset pages over the blobs still needed; each page is read once
        needs = sa.exists().where(_ITEMS.c.sha256 == _BLOBS.c.sha256, missing)
        rows = conn.execute(sa.select(_BLOBS.c.sha256, sa.func.substr(_BLOBS.c.data, 1, _PREFIX,
                                                                       type_=sa.LargeBinary))
                            .where(_BLOBS.c.sha256 > last, needs).order_by(_BLOBS.c.sha256).limit(batch)).all()
        if not rows:
            break
        conn.execute(sa.update(_ITEMS).where(_ITEMS.c.sha256 == sa.bindparam("digest"), missing)
                     .values(header_from=sa.bindparam("value")),
                     [{"digest": digest, "value": held_from(bytes(prefix or b""))} for digest, prefix in rows])
        last = rows[-1][0]
    conn.execute(sa.update(_ITEMS).where(missing).values(header_from=""))  # copy missing
    return filled
