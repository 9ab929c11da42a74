"""The learning ledger shared by the learner (under the model lock) and the IMAP hook (without it:
`stronghold learn --record-only` must stay quick, and only writes labels, never ``applied``, the
state a model's passport names by ``ledger_sha256``).  Each test puts the hook, a process of its
own, into the moment a learner is between reading and writing the ledger; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from stronghold.learning import shared_labels
from stronghold.store import ledger
from stronghold.store.db import Store
from stronghold.training import tokenize

MESSAGE = b"From: shop@x.example\nTo: b@example.com\nSubject: cheap pills\n\nBuy cheap pills now, best prices.\n"


def _imap_hook(store: Store, home: Path) -> None:
    """What Dovecot runs when b@example.com moves the message into Junk (devtools.localdovecot)."""
    moved = home / "moved.eml"
    moved.write_bytes(MESSAGE)
    env = {**os.environ, "STRONGHOLD_DATABASE_URL": store.url, "STRONGHOLD_DATA_DIR": str(home / "data"),
           "STRONGHOLD_MODELS_DIR": str(home / "models")}
    done = subprocess.run([sys.executable, "-m", "stronghold.cli", "learn", "--source", "imap", "--record-only",
                           "--by", "b@example.com", "--spam", "-"], input=MESSAGE, env=env, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()


def _once_then(real: Callable[..., object], meanwhile: Callable[[], None]) -> Callable[..., object]:
    """``real``, and right after its first call ``meanwhile`` (the other process's whole transaction)."""
    calls: list[int] = []

    def wrapped(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        if not calls:
            calls.append(1)
            meanwhile()
        return result
    return wrapped


def test_a_mark_given_again_while_the_learner_marks_applied_is_kept(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The learner took a forgotten message out of the model and deletes its row; the hook had just
    marked it spam again.  The row used to be deleted all the same: the user's mark was lost."""
    tokens = tokenize(MESSAGE)
    digest = ledger.content_hash(tokens)
    with store.session() as s:
        ledger.record(s, [tokens], [True], source="cli", who="postmaster")
        ledger.mark_applied(s, ledger.SHARED, {digest: True})  # the model learned it
    with store.session() as s:
        ledger.record(s, [tokens], [None], source="cli", who="postmaster")  # then it was forgotten
    monkeypatch.setattr(ledger, "rows", _once_then(ledger.rows, lambda: _imap_hook(store, tmp_path)))
    with store.session() as s:  # the learner's model no longer holds it
        ledger.mark_applied(s, ledger.SHARED, {digest: None})
    monkeypatch.undo()
    with store.session() as s:
        [row] = ledger.rows(s)
        assert (row.label, row.applied, row.source, row.who) == (True, None, "imap", "b@example.com")
        assert shared_labels(ledger.rows(s)) == {digest: True}  # the next learner learns it
        assert ledger.applied(s) == {}  # and what the model holds is what the learner wrote


def test_a_message_the_hook_records_while_the_learner_records_it_too_is_one_row(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's `learn` and the hook record the same new message at once: the second insert
    used to fail on the ledger's unique key (a StoreError: the learn run, or the user's mark, lost)."""
    tokens = tokenize(MESSAGE)
    monkeypatch.setattr(ledger, "pack_tokens", _once_then(ledger.pack_tokens, lambda: _imap_hook(store, tmp_path)))
    with store.session() as s:  # found no row, packs the features to insert one: the hook commits first
        change = ledger.record(s, [tokens], [False], source="cli", who="postmaster")
    monkeypatch.undo()
    assert (change.new, change.flipped) == (0, 1)  # the hook's spam mark, flipped to the operator's ham
    with store.session() as s:
        [row] = ledger.rows(s)
        assert (row.label, row.applied, row.source, row.content_hash) == \
            (False, None, "cli", ledger.content_hash(tokens))
        assert ledger.personal(s)["b@example.com"][1] == [True]  # the user's own layer keeps their mark


def _held_by(session: Session, who: str) -> int:
    """How many of ``who``'s marks the shared model holds as they gave them."""
    return sum(r.applied is not None and r.applied == r.label and r.who == who for r in ledger.rows(session))


def test_two_accounts_flipping_a_mark_back_and_forth_gain_no_places(store: Store) -> None:
    """Mallory's second account flips one of her learned marks and she flips it back before the next
    learning run, once per run: the shared model never holds more than her bound's worth of her
    marks (a fix that let marks past the bound keep what the model held, with places by time, gained
    her one mark per cycle; the second account cannot override a learned mark now)."""
    from stronghold.learning import SHARED_MARKS_PER_USER

    marks = [{f"word{i}", f"subject:offer {i}"} for i in range(SHARED_MARKS_PER_USER + 6)]

    def learning_run() -> int:
        with store.session() as s:
            ledger.mark_applied(s, ledger.SHARED, shared_labels(ledger.rows(s)))
        with store.session() as s:
            return _held_by(s, "mallory")
    with store.session() as s:
        for n in range(SHARED_MARKS_PER_USER + 1):
            ledger.record(s, [marks[n]], [False], source="imap", who="mallory", now=float(n))
    assert learning_run() == SHARED_MARKS_PER_USER
    now = 100.0
    for n in range(5):
        with store.session() as s:
            ledger.record(s, [marks[n]], [True], source="imap", who="mallory2", now=now)
            ledger.record(s, [marks[n]], [False], source="imap", who="mallory", now=now + 1)
            ledger.record(s, [marks[SHARED_MARKS_PER_USER + 1 + n]], [False], source="web", who="mallory",
                          now=now + 2)
        now += 3
        assert learning_run() == SHARED_MARKS_PER_USER
