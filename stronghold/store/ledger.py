"""The learning ledger: which messages feedback taught the model, with what label, from where, by whom."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from stronghold.store.messagelog import pack_tokens, unpack_tokens
from stronghold.store.tables import LearnedMessage

SOURCES = ("cli", "web", "imap", "junk")
USER_SOURCES = ("web", "imap", "junk")  # marks by users; "cli" is the operator's own learning
_TABLE = cast(Table, LearnedMessage.__table__)
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
        row = find(session, digest, scope)
        if row is None:
            if label is None:
                unknown += 1
                continue
            if _insert(session, dict(content_hash=digest, scope=scope, label=label, applied=None, set_aside=False,
                                     source=source, who=who[:320], created=now, updated=now,
                                     tokens=pack_tokens(tokens))):
                new += 1
                continue
            row = find(session, digest, scope)  # another process recorded the message meanwhile
            if row is None:  # pragma: no cover - the conflicting row cannot vanish: rows go only under the lock
                raise RuntimeError(f"ledger row {digest[:12]} ({scope or 'shared'}) conflicts yet is missing")
        if row.label == label or _holds_another_authors(row, scope, source, who[:320]):
            same += 1
            continue
        if label is None:
            forgotten += 1
            # a shared row goes at the next mark_applied, unless a model that may be rolled back to holds
            # it; a personal one when its layer is next rebuilt (drop_forgotten): until then its change
            # is what tells `stronghold jobs` the layer is out of date
        elif row.label is None:
            new += 1
            row.created = now  # a mark given anew: its place among its author's marks is now
        else:
            flipped += 1
        # A mark set aside by a rollback stays aside when it is given again, by anyone (flipping it
        # twice, or from a second account, would otherwise undo the rollback with two clicks): only
        # 'learn --readmit' lets it in; forgetting ends it.
        keep_aside = row.set_aside and label is not None
        row.label, row.source, row.who, row.updated, row.set_aside = label, source, who[:320], now, keep_aside
    return Change(new, same, flipped, forgotten, unknown)


def _holds_another_authors(row: LearnedMessage, scope: str, source: str, who: str) -> bool:
    """A user's mark meets a shared row whose label the model holds (``applied``) and someone else
    gave: it does not override it (flip it or take it out); the operator's own learning and the
    author's own marks do, and the user's personal layer takes their label all the same.  A user past
    their bound (``learning.SHARED_MARKS_PER_USER``) used to take out, one by one, without limit,
    what the operator and other users had taught, by marking it the other way."""
    return (scope == SHARED and source in USER_SOURCES and row.label is not None and row.who != who
            and row.applied == row.label)


def find(session: Session, digest: str, scope: str = SHARED) -> LearnedMessage | None:
    """The row of the message ``digest`` in ``scope`` (None: the ledger has never heard of it)."""
    return session.scalars(select(LearnedMessage).where(LearnedMessage.content_hash == digest,
                                                        LearnedMessage.scope == scope)).first()


def _insert(session: Session, values: dict[str, object]) -> bool:
    """Add a row unless one for the message and scope exists (committed meanwhile by another process:
    the IMAP hook records without the model lock); whether it was added."""
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(_TABLE)
    elif dialect == "sqlite":
        stmt = sqlite.insert(_TABLE)
    else:  # pragma: no cover - only the two databases above are supported
        raise NotImplementedError(f"learning ledger on {dialect}")
    stmt = stmt.values(values).on_conflict_do_nothing(index_elements=["content_hash", "scope"])
    return session.connection().execute(stmt.returning(_TABLE.c.id)).first() is not None  # None: it existed


def forget_by(session: Session, who: str, scope: str = SHARED) -> int:
    """Mark everything ``who`` taught (in ``scope``) for forgetting; returns how many."""
    rows = session.scalars(select(LearnedMessage).where(LearnedMessage.who == who, LearnedMessage.scope == scope,
                                                        LearnedMessage.label.is_not(None))).all()
    for row in rows:
        row.label, row.updated, row.set_aside = None, time.time(), False
    return len(rows)


def rows(session: Session, scope: str = SHARED) -> list[LearnedMessage]:
    """Every row of ``scope`` (wanted, applied, forgotten or set aside), by content hash."""
    return list(session.scalars(select(LearnedMessage).where(LearnedMessage.scope == scope)
                                .order_by(LearnedMessage.content_hash)))


def digest(pairs: Iterable[tuple[str, bool]]) -> str:
    """Identity of a set of (content hash, label): what a model's learned counts hold ("" for none)."""
    items = sorted(f"{c}:{'s' if s else 'h'}" for c, s in pairs)
    if not items:
        return ""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def mark_applied(session: Session, scope: str, wanted: dict[str, bool | None],
                 keep: Collection[str] = ()) -> None:
    """After the model was saved: ``applied`` follows ``wanted``; forgotten rows go, but for those
    in ``keep`` (held by a model that may be rolled back to: its tokens are needed to take them out).

    Only ``applied`` is written (what the model holds, and so its passport's ``ledger_sha256``):
    labels are the recorders' (the IMAP hook writes them without the model lock).  A forgotten row is
    deleted only if it is still forgotten when deleted: one marked again since it was read stays."""
    gone: list[int] = []
    for row in rows(session, scope):
        if row.content_hash in wanted:
            row.applied = wanted[row.content_hash]
        if row.label is None and row.applied is None and row.content_hash not in keep:
            gone.append(row.id)
    session.flush()
    for start in range(0, len(gone), 500):
        session.execute(delete(LearnedMessage).where(LearnedMessage.id.in_(gone[start:start + 500]),
                                                     LearnedMessage.label.is_(None),
                                                     LearnedMessage.applied.is_(None)),
                        execution_options={"synchronize_session": False})


def applied(session: Session, scope: str = SHARED) -> dict[str, bool]:
    """{content hash: label} of what the model's counts hold, as the ledger records it."""
    return {r.content_hash: bool(r.applied) for r in rows(session, scope) if r.applied is not None}


def restore(session: Session, held: dict[str, bool], aside: dict[str, bool]) -> int:
    """After a rollback of the shared model: ``applied`` becomes what the restored model holds
    (``held``), and the marks the rolled-back model had learned (``aside``) that the ledger still
    wants with that label are set aside.  Returns how many were newly set aside.  Every message
    of ``held`` must have a row (``missing`` says which do not)."""
    count = 0
    for row in rows(session, SHARED):
        row.applied = held.get(row.content_hash)
        if row.label is not None and aside.get(row.content_hash) == row.label and not row.set_aside:
            row.set_aside = True
            count += 1
    return count


def missing(session: Session, hashes: Collection[str]) -> list[str]:
    """Which of ``hashes`` the shared ledger holds no row (and so no features) for."""
    known = {r.content_hash for r in rows(session, SHARED)}
    return sorted(set(hashes) - known)


def readmit(session: Session, who: str | None = None) -> int:
    """Let set-aside marks (all, or those by ``who``) into the shared model again; returns how many."""
    query = select(LearnedMessage).where(LearnedMessage.scope == SHARED, LearnedMessage.set_aside.is_(True))
    if who is not None:
        query = query.where(LearnedMessage.who == who)
    found = list(session.scalars(query))
    for row in found:
        row.set_aside, row.updated = False, time.time()
    return len(found)


def set_aside_count(session: Session) -> int:
    """Marks a rollback set aside, still wanted (labelled) and not readmitted."""
    return len(session.scalars(select(LearnedMessage.id).where(
        LearnedMessage.scope == SHARED, LearnedMessage.set_aside.is_(True),
        LearnedMessage.label.is_not(None))).all())


def set_aside_among(session: Session, hashes: Collection[str]) -> set[str]:
    """Which of ``hashes`` are shared marks a rollback set aside (still wanted, not readmitted)."""
    if not hashes:
        return set()
    return set(session.scalars(select(LearnedMessage.content_hash).where(
        LearnedMessage.scope == SHARED, LearnedMessage.set_aside.is_(True), LearnedMessage.label.is_not(None),
        LearnedMessage.content_hash.in_(list(hashes)))))


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


def forgotten_personal(session: Session, scopes: Iterable[str] | None = None) -> list[int]:
    """Ids of the forgotten personal rows of ``scopes`` (None: every personal scope)."""
    query = select(LearnedMessage.id).where(LearnedMessage.scope != SHARED, LearnedMessage.label.is_(None))
    if scopes is not None:
        query = query.where(LearnedMessage.scope.in_(sorted(set(scopes) - {SHARED})))
    return list(session.scalars(query))


def drop_forgotten(session: Session, ids: Collection[int]) -> None:
    """Delete these forgotten personal rows (``forgotten_personal``) once a layer left them out;
    one marked again meanwhile stays."""
    if ids:
        session.execute(delete(LearnedMessage).where(LearnedMessage.id.in_(sorted(ids)),
                                                     LearnedMessage.label.is_(None)))


def drop_personal(session: Session, scope: str) -> int:
    """Delete every row of one personal ``scope`` (a deleted user's): nothing of theirs trains a
    layer any more; returns how many.  The shared model's rows are never touched here."""
    if scope == SHARED:
        raise ValueError("the shared scope is not a personal one")
    result = session.execute(delete(LearnedMessage).where(LearnedMessage.scope == scope))
    return int(getattr(result, "rowcount", 0) or 0)


def personal_changed_since(session: Session, since: float) -> bool:
    """Did any personal feedback change (recorded, flipped, forgotten) after ``since``?"""
    return session.scalars(select(LearnedMessage.id).where(LearnedMessage.scope != SHARED,
                                                           LearnedMessage.updated > since)).first() is not None


def recent(session: Session, since: float, scope: str = SHARED) -> list[LearnedMessage]:
    """Labelled rows changed since ``since`` (the feedback part of the held-back set); marks a
    rollback set aside are suspect and judge nothing."""
    return list(session.scalars(select(LearnedMessage).where(LearnedMessage.scope == scope,
                                                             LearnedMessage.updated >= since,
                                                             LearnedMessage.label.is_not(None),
                                                             LearnedMessage.set_aside.is_(False))))
