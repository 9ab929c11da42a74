"""Web marks into the learning ledger (``feedback.record_pending``), on SQLite and PostgreSQL: a
learning run reads the pending marks, records them, builds the candidate (seconds) and only then
marks them taken in, while users go on clicking."""

from __future__ import annotations

from stronghold import feedback
from stronghold.message import parse
from stronghold.store import accounts, ledger, messagelog
from stronghold.store.db import Store
from stronghold.training import tokenize
from stronghold.verdict import Action, Category, Envelope, Verdict

RAW = b"From: deals@promo.example\nTo: alice@example.com\nSubject: Cheap watches\n\nBuy cheap watches.\n"


def test_a_mark_changed_while_a_learning_run_works_waits_for_the_next_run(store: Store) -> None:
    """Alice marks a message spam; a run reads it; she changes her mind ("not spam") before the run
    is done.  The run used to mark her changed mark taken in with the rest: it never reached the
    ledger, and the page said "taken in" of a mark the model had learned the other way."""
    tokens = tokenize(RAW)
    verdict = Verdict(Action.TAG, Category.SPAM, 0.95, 0.9, None, (), ())
    with store.session() as s:
        alice = accounts.add_user(s, "alice", "a long enough passphrase")
        [mid] = messagelog.write(s, [messagelog.entry(Envelope("deals@promo.example", ("alice@example.com",)),
                                                      parse(RAW), verdict, tokens=tokens)])
        messagelog.set_feedback(s, mid, alice.id, is_spam=True)
    items, mark_done, change = feedback.record_pending(store)
    assert ([label for _, label, _ in items], change.new) == ([True], 1)
    with store.session() as s:  # meanwhile, in the web UI
        messagelog.set_feedback(s, mid, alice.id, is_spam=False)
    mark_done()
    with store.session() as s:
        [(mark, _)] = messagelog.pending(s)
        assert mark.is_spam is False
    items, mark_done, change = feedback.record_pending(store)  # the next run takes the change in
    mark_done()
    assert ([label for _, label, _ in items], change.flipped) == ([False], 1)
    with store.session() as s:
        assert messagelog.pending(s) == []
        assert [r.label for r in ledger.rows(s)] == [False] and [r.label for r in ledger.rows(s, "alice")] == [False]


def test_of_two_users_marks_on_one_message_the_later_one_is_learned(store: Store) -> None:
    """Bob and alice both got the message; bob marked it spam first, alice spam too, then bob changed
    his mind.  The shared model learns the latest mark, bob's "not spam" (the marks were recorded
    in the order the database happened to return them: by row, so alice's older mark won)."""
    verdict = Verdict(Action.TAG, Category.SPAM, 0.95, 0.9, None, (), ())
    with store.session() as s:
        bob = accounts.add_user(s, "bob", "a long enough passphrase")
        alice = accounts.add_user(s, "alice", "a long enough passphrase")
        [mid] = messagelog.write(s, [messagelog.entry(Envelope("deals@promo.example", ("alice@example.com",
                                                                                     "bob@example.com")),
                                                      parse(RAW), verdict, tokens=tokenize(RAW))])
        messagelog.set_feedback(s, mid, bob.id, is_spam=True)
    with store.session() as s:
        messagelog.set_feedback(s, mid, alice.id, is_spam=True)
    with store.session() as s:
        messagelog.set_feedback(s, mid, bob.id, is_spam=False)
    _, mark_done, _ = feedback.record_pending(store)
    mark_done()
    with store.session() as s:
        assert [(r.label, r.who) for r in ledger.rows(s)] == [(False, "bob")]
