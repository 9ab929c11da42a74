"""Turn users' "spam / not spam" marks into training data for `stronghold learn`."""

from __future__ import annotations

from collections.abc import Callable

from stronghold.store import accounts, messagelog
from stronghold.store.db import Store


def pending_items(store: Store) -> tuple[list[tuple[set[str], bool, str]], Callable[[], None]]:
    """(features, is_spam, login) of unapplied web feedback, and a callback marking it applied."""
    with store.session() as session:
        rows = messagelog.pending(session)
        logins = accounts.logins(session, {fb.user_id for fb, _ in rows})
        items = [(messagelog.unpack_tokens(msg.tokens), fb.is_spam, logins.get(fb.user_id, ""))
                 for fb, msg in rows if msg.tokens]
        ids = [fb.id for fb, _ in rows]

    def mark_done() -> None:
        with store.session() as session:
            messagelog.mark_applied(session, ids)
    return items, mark_done
