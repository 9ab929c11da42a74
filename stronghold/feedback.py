"""Turn users' "spam / not spam" marks into training data for `stronghold learn`."""

from __future__ import annotations

import time
from collections.abc import Callable

from stronghold.store import messagelog
from stronghold.store.db import Store


def pending_items(store: Store) -> tuple[list[tuple[set[str], bool, str]], Callable[[], None]]:
    """(features, is_spam, login) of unapplied web feedback, and a callback marking it applied."""
    from stronghold.store.tables import User
    with store.session() as session:
        rows = messagelog.pending(session)
        logins = {u.id: u.login for u in session.query(User).filter(User.id.in_({fb.user_id for fb, _ in rows}))}
        items = [(messagelog.unpack_tokens(msg.tokens), fb.is_spam, logins.get(fb.user_id, ""))
                 for fb, msg in rows if msg.tokens]
        ids = [fb.id for fb, _ in rows]

    def mark_done() -> None:
        from stronghold.store.tables import Feedback
        with store.session() as session:
            for fid in ids:
                row = session.get(Feedback, fid)
                if row is not None and row.applied is None:
                    row.applied = time.time()
    return items, mark_done
