"""Stronghold's quarantine: held copies of messages, one item per recipient.

Where the copies live, and why the database
--------------------------------------------
Held messages are stored in the database, the one place every mail node
already shares (PostgreSQL when there are several nodes; SQLite for one).  A
message held on node A must be listable, previewable and releasable from the
web UI or the CLI on node B, and purged once, by whichever node purges first;
a folder would need a shared mount, its own locking, and a second backup and
retention story that can drift from the rows describing it.  In the database
the item rows, the bytes and the release claim change in one transaction.

Each distinct message is stored once: the raw bytes are compressed with zlib
and keyed by their SHA-256 (``quarantine_blobs``); ``quarantine_items`` has one
row per (message, recipient) pointing at it.  Three recipients who all
quarantine the same copy cost one blob and three small rows.

Limits: a blob is one ``bytea`` value (PostgreSQL, 1 GB ceiling) or one SQLite
BLOB (1 GB by default); both are read and written whole, in memory.  What the
milter holds is therefore bounded by ``max_message_bytes`` (25 MiB by default):
the caller must not hold more than that setting.  Mail is mostly text and
compresses 2-4x, but a quarantine of many large attachments grows the database
accordingly; ``quarantine_retention_days`` (purged with the message log) bounds
it in time.

Release bookkeeping
-------------------
``claim`` is one ``UPDATE ... WHERE released IS NULL``: of two nodes, two
clicks or a click and a digest link racing for the same item exactly one sees a
row count of 1 and goes on to re-inject; the other is told it lost.
``unclaim`` gives the item back if re-injection failed, and ``mark_delivered``
records the relay's acceptance (see stronghold.release for the crash window).
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Table, and_, exists, func, insert, or_, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from stronghold.headers import recorded_froms, shorten_from
from stronghold.message import parse
from stronghold.store.tables import Address, QuarantineBlob, QuarantineItem, User
from stronghold.verdict import Envelope, Verdict

VIRUS = "virus"
MAX_HEADER_BYTES = 256 * 1024  # where from_header() stops looking for the end of the header block
_BLOBS = cast(Table, QuarantineBlob.__table__)
_ITEMS = cast(Table, QuarantineItem.__table__)


@dataclass(frozen=True)
class Held:
    """One quarantined copy for one recipient (what callers see; never the ORM row)."""

    id: int
    recipient: str
    sender: str
    subject: str
    queue_id: str
    ts: float
    score: float | None
    category: str
    reason: str
    trace: str
    virus: str | None
    size: int
    sha256: str
    released: float | None
    released_by: str | None
    delivered: float | None = None  # when the release relay accepted it (None: not confirmed)
    header_from: str | None = None  # the header From as received; None: not recorded (held before 0008)

    @property
    def is_virus(self) -> bool:
        """Whether the copy was held for a virus (such copies only admins release)."""
        return self.category == VIRUS or bool(self.virus)


def _held(row: QuarantineItem) -> Held:
    return Held(id=row.id, recipient=row.recipient, sender=row.sender, subject=row.subject,
                queue_id=row.queue_id, ts=row.ts, score=row.score, category=row.category,
                reason=row.reason, trace=row.trace, virus=row.virus, size=row.size, sha256=row.sha256,
                released=row.released, released_by=row.released_by, delivered=row.delivered,
                header_from=row.header_from)


def _address(address: str) -> str:
    return address.strip().strip("<>").lower()


def _upsert_blob(session: Session, digest: str, raw: bytes, now: float) -> None:
    """Insert the blob once; if it exists, only refresh ``touched`` (race-safe on both databases).

    Touching takes the row's lock, so a concurrent purge of "orphans not used
    lately" re-checks ``touched`` and leaves this blob alone.
    """
    values = {"sha256": digest, "size": len(raw), "data": zlib.compress(raw, 6), "touched": now}
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(_BLOBS).values(values)
    elif dialect == "sqlite":
        stmt = sqlite.insert(_BLOBS).values(values)
    else:  # pragma: no cover - only the two databases above are supported
        raise NotImplementedError(f"quarantine on {dialect}")
    session.execute(stmt.on_conflict_do_update(index_elements=["sha256"],
                                               set_={"touched": stmt.excluded.touched}))


def _head(raw: bytes) -> bytes:
    """The header block of ``raw`` (at most ``MAX_HEADER_BYTES``)."""
    end = re.search(rb"\r?\n\r?\n", raw[:MAX_HEADER_BYTES])
    return raw[:end.end() if end else MAX_HEADER_BYTES]


def from_header(raw: bytes) -> str:
    """The first From header of ``raw`` as the message log records it ("" when there is none)."""
    return parse(_head(raw)).header("from") or ""


_FROM_LINE = re.compile(rb"(?im)^from[ \t]*:")


def recorded_from(raw: bytes, first: str | None = None) -> str:
    """What an item records of the From (``header_from``, see ``headers.recorded_froms``): the first
    From header (``first``, when the caller parsed it), or every one when the copy has several."""
    head = _head(raw)
    if first is not None and len(_FROM_LINE.findall(head)) < 2:
        return shorten_from(first)
    found = parse(head).header_all("from")
    return recorded_froms(found if len(found) > 1 or first is None else [first])


def hold(session: Session, raw: bytes, *, recipients: Sequence[str], sender: str, subject: str,
         queue_id: str, score: float | None, category: str, reason: str, trace: str,
         virus: str | None, header_from: str | None = None) -> list[int]:
    """Store ``raw`` once and one item per recipient; returns the item ids in recipient order.

    ``header_from``: the message's first From header (read from ``raw`` when not given); every
    From header is recorded when there are several (``recorded_from``)."""
    if not recipients:
        return []
    header_from = recorded_from(raw, header_from)
    now = time.time()
    digest = hashlib.sha256(raw).hexdigest()
    _upsert_blob(session, digest, raw, now)
    rows = [{"ts": now, "recipient": _address(r)[:320], "sender": sender[:320],
             "header_from": header_from, "subject": subject[:200],
             "queue_id": queue_id[:40], "score": score, "category": category[:10], "reason": reason[:200],
             "trace": trace[:4000], "virus": virus[:200] if virus else None, "size": len(raw),
             "sha256": digest} for r in recipients]
    stmt = insert(_ITEMS).returning(_ITEMS.c.id, sort_by_parameter_order=True)
    return [int(i) for i in session.connection().execute(stmt, rows).scalars()]



def hold_verdict(session: Session, envelope: Envelope, verdict: Verdict, raw: bytes, subject: str,
                 header_from: str | None = None) -> list[int]:
    """One item per recipient whose copy ``verdict`` holds; returns their ids.

    Each item's trace is the message's steps and that recipient's own, never
    another recipient's lists.  The bytes are stored once however many hold them.
    """
    message_steps = " ".join(str(s) for s in verdict.trace)
    ids: list[int] = []
    for d in verdict.held:
        own = " ".join(str(s) for s in d.trace)
        ids += hold(session, raw, recipients=[d.recipient], sender=envelope.sender, subject=subject,
                    queue_id=envelope.queue_id, score=verdict.score, category=d.category.value,
                    reason=d.reason, trace=f"{message_steps} {own}".strip(), virus=verdict.virus,
                    header_from=header_from)
    return ids

def ids_for_message(session: Session, queue_id: str, recipients: Sequence[str],
                    addresses: Sequence[str] | None) -> list[int]:
    """Item ids of the message ``queue_id`` held for ``recipients``; with ``addresses``
    only theirs, and no virus (what a user may release)."""
    if not queue_id:
        return []
    query = select(QuarantineItem.id).where(QuarantineItem.queue_id == queue_id,
                                            QuarantineItem.recipient.in_(list(recipients)))
    if addresses is not None:
        query = query.where(QuarantineItem.recipient.in_(list(addresses)), QuarantineItem.category != VIRUS,
                            QuarantineItem.virus.is_(None))
    return list(session.scalars(query.order_by(QuarantineItem.id)))


def get(session: Session, item_id: int) -> Held | None:
    """The item ``item_id``, or None if there is none."""
    row = session.get(QuarantineItem, item_id)
    return _held(row) if row is not None else None


def with_from(session: Session, rows: Sequence[Held]) -> list[Held]:
    """``rows`` with the header From of items held before it was recorded (migration 0008) read
    from their copy ("" when the copy is gone; the first From only: items held since record every
    From header of a copy that has several, one per line, ``recorded_from``)."""
    filled = []
    for h in rows:
        if h.header_from is None:
            try:
                h = replace(h, header_from=from_header(content(session, h.id)))
            except KeyError:
                h = replace(h, header_from="")
        filled.append(h)
    return filled


def content(session: Session, item_id: int) -> bytes:
    """The held message exactly as it arrived; KeyError if there is no such item."""
    data = session.scalar(select(QuarantineBlob.data).join(
        QuarantineItem, QuarantineItem.sha256 == QuarantineBlob.sha256).where(QuarantineItem.id == item_id))
    if data is None:
        raise KeyError(item_id)
    return zlib.decompress(data)


def find(session: Session, *, recipients: Sequence[str] | None, text: str = "", since: float | None = None,
         until: float | None = None, include_viruses: bool = True, limit: int = 100,
         offset: int = 0, owned_since: Mapping[str, float] | None = None, unattended: bool = False) -> list[Held]:
    """Items newest first.  ``recipients=None``: everyone's (admins); ``[]``: nothing.

    ``text`` matches sender or subject, case-insensitively, as a plain substring.
    ``owned_since``: per recipient, the time its current owner got it; what was held for a
    previous owner is not theirs (``accounts.owned_since``).
    ``unattended``: only items no enabled user sees (``unattended_clause``).
    """
    query = select(QuarantineItem)
    if unattended:
        query = query.where(unattended_clause())
    if recipients is not None:
        wanted = sorted({_address(r) for r in recipients})
        if not wanted:
            return []
        owned = {_address(a): t for a, t in (owned_since or {}).items() if t}
        query = query.where(or_(*(and_(QuarantineItem.recipient == a, QuarantineItem.ts >= owned[a])
                                  if a in owned else QuarantineItem.recipient == a for a in wanted)))
    if text:
        needle = text.lower()
        query = query.where(or_(*(func.lower(column).contains(needle, autoescape=True)
                                  for column in (QuarantineItem.sender, QuarantineItem.header_from,
                                                 QuarantineItem.subject))))
    if since is not None:
        query = query.where(QuarantineItem.ts >= since)
    if until is not None:
        query = query.where(QuarantineItem.ts < until)
    if not include_viruses:
        query = query.where(QuarantineItem.category != VIRUS, QuarantineItem.virus.is_(None))
    query = query.order_by(QuarantineItem.ts.desc(), QuarantineItem.id.desc()).limit(limit).offset(offset)
    return [_held(r) for r in session.scalars(query)]


def unattended_clause() -> ColumnElement[bool]:
    """Items that no enabled user sees on their Junk page or in their digest: held for a disabled
    user's address, for an address nobody owns, or before its current owner got it.  Only admins
    see these (the quarantine purge deletes them like any other)."""
    owner_sees = (select(Address.id).join(User, User.id == Address.user_id)
                  .where(Address.address == QuarantineItem.recipient, User.disabled.is_(False),
                         Address.since <= QuarantineItem.ts))
    return ~owner_sees.exists()


def count_unattended(session: Session, recipients: Sequence[str] | None = None, since: float | None = None,
                     until: float | None = None) -> int:
    """Unreleased items no enabled user sees (``unattended_clause``); with ``recipients``, theirs
    only; with ``since``/``until``, those held in [since, until)."""
    query = select(func.count(QuarantineItem.id)).where(QuarantineItem.released.is_(None), unattended_clause())
    if recipients is not None:
        query = query.where(QuarantineItem.recipient.in_([_address(r) for r in recipients]))
    if since is not None:
        query = query.where(QuarantineItem.ts >= since)
    if until is not None:
        query = query.where(QuarantineItem.ts < until)
    return int(session.scalar(query) or 0)


def delete(session: Session, item_id: int) -> bool:
    """Remove one item (its blob goes with the next purge once no item uses it)."""
    result = cast(CursorResult[Any], session.execute(sql_delete(QuarantineItem).where(QuarantineItem.id == item_id)))
    return bool(result.rowcount)


def purge_older_than(session: Session, days: int) -> int:
    """Delete items held more than ``days`` ago, then blobs no item uses; returns the items deleted.

    A blob is only dropped if it is orphaned AND was not touched by a hold()
    in the last hour, so a hold racing with the purge keeps its blob.
    """
    now = time.time()
    result = cast(CursorResult[Any], session.execute(
        sql_delete(QuarantineItem).where(QuarantineItem.ts < now - days * 86400)))
    session.execute(sql_delete(QuarantineBlob).where(
        QuarantineBlob.touched < now - 3600,
        ~exists().where(QuarantineItem.sha256 == QuarantineBlob.sha256)))
    return int(result.rowcount or 0)


def claim(session: Session, item_id: int, by: str, now: float | None = None) -> float | None:
    """Mark the item released by ``by`` unless someone did first.

    Returns the claim's timestamp if this call won (commit before acting on
    it), None if the item is gone or already claimed.
    """
    stamp = time.time() if now is None else now
    result = cast(CursorResult[Any], session.execute(
        update(QuarantineItem).where(QuarantineItem.id == item_id, QuarantineItem.released.is_(None))
        .values(released=stamp, released_by=by[:320])))
    return stamp if result.rowcount == 1 else None


def reclaim(session: Session, item_id: int, old_stamp: float, by: str) -> float | None:
    """Take over an unconfirmed claim made at ``old_stamp`` (an admin's retry); None if it changed."""
    stamp = time.time()
    result = cast(CursorResult[Any], session.execute(
        update(QuarantineItem).where(QuarantineItem.id == item_id, QuarantineItem.released == old_stamp,
                                     QuarantineItem.delivered.is_(None))
        .values(released=stamp, released_by=by[:320])))
    return stamp if result.rowcount == 1 else None


def unclaim(session: Session, item_id: int, stamp: float) -> bool:
    """Undo the claim made at ``stamp`` (and only that one), so the release can be tried again."""
    result = cast(CursorResult[Any], session.execute(
        update(QuarantineItem).where(QuarantineItem.id == item_id, QuarantineItem.released == stamp,
                                     QuarantineItem.delivered.is_(None))
        .values(released=None, released_by=None)))
    return result.rowcount == 1


def mark_delivered(session: Session, item_id: int, stamp: float) -> None:
    """Record that the relay accepted the release claimed at ``stamp``."""
    session.execute(update(QuarantineItem).where(QuarantineItem.id == item_id,
                                                 QuarantineItem.released == stamp)
                    .values(delivered=time.time()))


def count(session: Session) -> int:
    """How many items (held copies, one per recipient) there are."""
    return int(session.scalar(select(func.count(QuarantineItem.id))) or 0)


def count_unreleased(session: Session) -> int:
    """Held copies not yet released."""
    return int(session.scalar(select(func.count(QuarantineItem.id)).where(QuarantineItem.released.is_(None))) or 0)


def blob_count(session: Session) -> int:
    """How many distinct messages the quarantine stores."""
    return int(session.scalar(select(func.count(QuarantineBlob.sha256))) or 0)
