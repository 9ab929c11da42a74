"""Turn users' "spam / not spam" marks into training data for `stronghold learn`."""

from __future__ import annotations

from collections.abc import Callable

from stronghold.store import accounts, ledger, messagelog
from stronghold.store.db import Store


def pending_items(store: Store) -> tuple[list[tuple[set[str], bool, str]], Callable[[], None]]:
    """(features, is_spam, login) of unapplied web feedback, and a callback marking it applied."""
    with store.session() as session:
        rows = messagelog.pending(session)
        logins = accounts.logins(session, {fb.user_id for fb, _ in rows})
        items = [(messagelog.unpack_tokens(msg.tokens), fb.is_spam, logins.get(fb.user_id, ""))
                 for fb, msg in rows if msg.tokens]
        as_read = {fb.id: fb.created for fb, _ in rows}

    def mark_done() -> None:
        # a mark the user changed while training ran is left for the next run (it used to be marked
        # applied with the rest: the changed mark never reached the ledger)
        with store.session() as session:
            messagelog.mark_applied(session, as_read, as_read=as_read)
    return items, mark_done


def record_pending(store: Store) -> tuple[list[tuple[set[str], bool, str]], Callable[[], None], ledger.Change]:
    """Put the unapplied web marks in the ledger (shared, and the marking user's own scope);
    returns them, the callback that marks them applied (once the model took them), and the change."""
    items, mark_done = pending_items(store)
    change = ledger.Change()
    with store.session() as session:
        for tokens, is_spam, login in items:
            c = ledger.record(session, [tokens], [is_spam], source="web", who=login)
            if login:  # a user's mark moves their own scores at once
                ledger.record(session, [tokens], [is_spam], source="web", who=login, scope=login)
            change = ledger.Change(change.new + c.new, change.same + c.same, change.flipped + c.flipped,
                                   change.forgotten, change.unknown)
    return items, mark_done, change
