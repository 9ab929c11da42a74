"""Fixed-window counters in the ``rate_limits`` table, shared by every web node.

The web UI's Flask-Limiter storage (``webui.ratelimit``) counts here; expired
rows are purged as new ones come.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from stronghold.store.db import Store
from stronghold.store.tables import RateLimit

ERRORS = SQLAlchemyError  # what these functions raise when the database fails


def incr(store: Store, key: str, expiry: int, amount: int = 1) -> int:
    """Add ``amount`` to the live counter ``key`` (a new one lives ``expiry`` seconds); its new count."""
    for _ in range(3):  # a concurrent insert of the same key: count again
        now = time.time()
        with store.engine.begin() as conn:
            done = conn.execute(update(RateLimit).where(RateLimit.key == key, RateLimit.expires > now)
                                .values(count=RateLimit.count + amount))
            if done.rowcount:
                return int(conn.execute(select(RateLimit.count).where(RateLimit.key == key)).scalar_one())
        try:
            with store.engine.begin() as conn:
                conn.execute(delete(RateLimit).where(RateLimit.expires <= now))
                conn.execute(insert(RateLimit).values(key=key, count=amount, expires=now + expiry))
            return amount
        except IntegrityError:
            continue
    raise RuntimeError(f"rate limit counter {key} kept changing")


def current(store: Store, key: str) -> tuple[int, float] | None:
    """(count, expires) of the live counter ``key``; None if there is none."""
    with store.engine.connect() as conn:
        row = conn.execute(select(RateLimit.count, RateLimit.expires).where(RateLimit.key == key)).first()
    if row is None or row[1] <= time.time():
        return None
    return int(row[0]), float(row[1])


def reachable(store: Store) -> bool:
    """Whether the database answers a trivial query (the rate limits can be counted)."""
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def reset(store: Store) -> int:
    """Remove every counter; how many there were."""
    with store.engine.begin() as conn:
        return int(conn.execute(delete(RateLimit)).rowcount or 0)


def clear(store: Store, key: str) -> None:
    """Remove the counter ``key`` (nothing if there is none)."""
    with store.engine.begin() as conn:
        conn.execute(delete(RateLimit).where(RateLimit.key == key))
