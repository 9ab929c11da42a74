"""The learning ledger: which messages feedback taught the model, with what label, from where, by whom."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from stronghold.store.messagelog import pack_tokens, unpack_tokens
from stronghold.store.tables import LearnedMessage

SOURCES = ("cli", "web", "imap", "junk")
SHARED = ""  # the scope of the shared model (other scopes: a user's personal layer)


def content_hash(tokens: Iterable[str]) -> str:
    """SHA-256 of a message's features (sorted): the same message however it was stored or sent."""
    return hashlib.sha256("\n".join(sorted(tokens)).encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    """What one ``record`` did to the ledger."""

    new: int = 0
    same: int = 0
    flipped: int = 0
    forgotten: int = 0
    unknown: int = 0  # forget of a message the ledger does not hold


def record(session: Session, token_sets: Sequence[set[str]], labels: Sequence[bool | None], *,
           source: str, who: str, scope: str = SHARED, now: float | None = None) -> Change:
    """Set the wanted label of each message (None: forget it). The counts move at ``sync``."""
    if source not in SOURCES:
        raise ValueError(f"unknown feedback source {source!r}")
    now = time.time() if now is None else now
    new = same = flipped = forgotten = unknown = 0
    for tokens, label in zip(token_sets, labels, strict=True):
        digest = content_hash(tokens)
        row = session.scalars(select(LearnedMessage).where(LearnedMessage.content_hash == digest,
                                                           LearnedMessage.scope == scope)).first()
        if row is None:
            if label is None:
                unknown += 1
                continue
            session.add(LearnedMessage(content_hash=digest, scope=scope, label=label, applied=None,
                                       source=source, who=who[:320], created=now, updated=now,
                                       tokens=pack_tokens(tokens)))
            session.flush()
            new += 1
            continue
        if row.label == label:
            same += 1
            continue
        if label is None:
            forgotten += 1
            if row.applied is None:  # never in any model's counts: nothing to take out later
                session.delete(row)
                continue
        elif row.label is None:
            new += 1
        else:
            flipped += 1
        row.label, row.source, row.who, row.updated = label, source, who[:320], now
    return Change(new, same, flipped, forgotten, unknown)


def forget_by(session: Session, who: str, scope: str = SHARED) -> int:
    """Mark everything ``who`` taught (in ``scope``) for forgetting; returns how many."""
    rows = session.scalars(select(LearnedMessage).where(LearnedMessage.who == who, LearnedMessage.scope == scope,
                                                        LearnedMessage.label.is_not(None))).all()
    for row in rows:
        row.label, row.updated = None, time.time()
    return len(rows)


def rows(session: Session, scope: str = SHARED) -> list[LearnedMessage]:
    return list(session.scalars(select(LearnedMessage).where(LearnedMessage.scope == scope)
                                .order_by(LearnedMessage.content_hash)))


def digest(pairs: Iterable[tuple[str, bool]]) -> str:
    """Identity of a set of (content hash, label): what a model's learned counts hold ("" for none)."""
    items = sorted(f"{c}:{'s' if s else 'h'}" for c, s in pairs)
    if not items:
        return ""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def mark_applied(session: Session, scope: str, wanted: dict[str, bool | None]) -> None:
    """After the model was saved: ``applied`` follows ``label``; forgotten rows go."""
    for row in rows(session, scope):
        if row.content_hash in wanted:
            row.applied = wanted[row.content_hash]
    session.execute(delete(LearnedMessage).where(LearnedMessage.scope == scope, LearnedMessage.label.is_(None),
                                                 LearnedMessage.applied.is_(None)))


def personal(session: Session, scopes: Iterable[str] | None = None) -> dict[str, tuple[list[set[str]], list[bool]]]:
    """Labelled personal feedback by scope: (token sets, is spam); ``scopes`` None: every
    personal scope, else those (each present, empty if it has none)."""
    query = select(LearnedMessage.scope, LearnedMessage.tokens, LearnedMessage.label).where(
        LearnedMessage.scope != SHARED, LearnedMessage.label.is_not(None))
    wanted = None if scopes is None else sorted(set(scopes) - {SHARED})
    if wanted is not None:
        query = query.where(LearnedMessage.scope.in_(wanted))
    by_scope: dict[str, tuple[list[set[str]], list[bool]]] = {s: ([], []) for s in wanted or ()}
    for scope, blob, label in session.execute(query):
        sets, labels = by_scope.setdefault(scope, ([], []))
        sets.append(unpack_tokens(blob))
        labels.append(bool(label))
    return by_scope


def has_personal(session: Session) -> bool:
    """Whether any personal feedback was ever recorded (wanted or forgotten)."""
    return session.scalars(select(LearnedMessage.id).where(LearnedMessage.scope != SHARED)).first() is not None


def personal_changed_since(session: Session, since: float) -> bool:
    """Did any personal feedback change (recorded, flipped, forgotten) after ``since``?"""
    return session.scalars(select(LearnedMessage.id).where(LearnedMessage.scope != SHARED,
                                                           LearnedMessage.updated > since)).first() is not None


def recent(session: Session, since: float, scope: str = SHARED) -> list[LearnedMessage]:
    """Labelled rows changed since ``since`` (the feedback part of the held-back set)."""
    return list(session.scalars(select(LearnedMessage).where(LearnedMessage.scope == scope,
                                                             LearnedMessage.updated >= since,
                                                             LearnedMessage.label.is_not(None))))
