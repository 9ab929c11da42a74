"""The message log: one row per message the filter decided, one per recipient."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, selectinload

from stronghold.engine import Envelope
from stronghold.message import ParsedMessage
from stronghold.store.tables import Feedback, MessageRecipient, MessageRow
from stronghold.verdict import Verdict


def pack_tokens(tokens: Iterable[str]) -> bytes:
    return zlib.compress("\n".join(sorted(tokens)).encode(), 1)


def unpack_tokens(blob: bytes) -> set[str]:
    return set(zlib.decompress(blob).decode().split("\n"))


def record(session: Session, envelope: Envelope, msg: ParsedMessage, verdict: Verdict,
           tokens: Iterable[str] | None = None, ts: float | None = None) -> int:
    """Log a verdict with one row per recipient; returns the message id.

    Plain Core inserts: this runs for every message, and the ORM's unit of work
    cost as much CPU as deciding about the message.
    """
    values = {
        "ts": ts if ts is not None else time.time(), "queue_id": envelope.queue_id[:40],
        "client_ip": envelope.client_ip[:64], "sender": envelope.sender[:320],
        "header_from": (msg.header("from") or "")[:320], "subject": (msg.header("subject") or "")[:200],
        "size": msg.size, "score": verdict.score, "threshold": verdict.threshold,
        "category": verdict.category.value, "action": verdict.action.value, "virus": verdict.virus or "",
        "reasons": " ".join(verdict.reasons)[:4000], "trace": verdict.summary[:4000],
        "tokens": pack_tokens(tokens) if tokens is not None else None,
    }
    recipients = [{"address": d.recipient[:320], "category": d.category.value, "action": d.action.value,
                   "reason": d.reason[:200]} for d in verdict.decisions]
    return _insert(session, values, recipients)


def record_rcpt_reject(session: Session, envelope: Envelope, recipient: str, why: str,
                       trace: str) -> int:
    """A recipient refused at RCPT time (no message content exists yet)."""
    values = {"ts": time.time(), "queue_id": envelope.queue_id[:40], "client_ip": envelope.client_ip[:64],
              "sender": envelope.sender[:320], "header_from": "", "subject": "", "size": 0, "score": None,
              "threshold": None, "category": "blocked", "action": "reject", "virus": "", "reasons": why,
              "trace": trace[:4000], "tokens": None}
    return _insert(session, values, [{"address": recipient[:320], "category": "blocked", "action": "reject",
                                      "reason": why[:200]}])


def _insert(session: Session, values: dict[str, object], recipients: list[dict[str, object]]) -> int:
    message_id = int(session.execute(insert(MessageRow).values(**values).returning(MessageRow.id)).scalar_one())
    if recipients:
        session.execute(insert(MessageRecipient), [{**r, "message_id": message_id} for r in recipients])
    return message_id


@dataclass(frozen=True)
class LogFilter:
    addresses: tuple[str, ...] | None = None  # None: everyone (admins)
    category: str = ""
    limit: int = 100
    offset: int = 0


def recent(session: Session, flt: LogFilter) -> list[MessageRow]:
    query = select(MessageRow).options(selectinload(MessageRow.recipients))
    if flt.addresses is not None:
        query = query.where(MessageRow.id.in_(
            select(MessageRecipient.message_id).where(MessageRecipient.address.in_(flt.addresses))))
    if flt.category:
        query = query.where(MessageRow.category == flt.category)
    query = query.order_by(MessageRow.ts.desc(), MessageRow.id.desc()).limit(flt.limit).offset(flt.offset)
    return list(session.scalars(query))


def visible_message(session: Session, message_id: int,
                    addresses: tuple[str, ...] | None) -> MessageRow | None:
    """The message if one of ``addresses`` received it (None: any, for admins)."""
    row = session.get(MessageRow, message_id)
    if row is None:
        return None
    if addresses is not None and not any(r.address in addresses for r in row.recipients):
        return None
    return row


def daily_counts(session: Session, addresses: tuple[str, ...] | None,
                 days: int = 30) -> dict[str, dict[str, int]]:
    """{YYYY-MM-DD: {category: count}} for the last ``days`` days (UTC)."""
    since = time.time() - days * 86400
    query = select(MessageRow.ts, MessageRow.category).where(MessageRow.ts >= since)
    if addresses is not None:
        query = query.where(MessageRow.id.in_(
            select(MessageRecipient.message_id).where(MessageRecipient.address.in_(addresses))))
    out: dict[str, dict[str, int]] = {}
    for ts, category in session.execute(query):
        day = time.strftime("%Y-%m-%d", time.gmtime(ts))
        bucket = out.setdefault(day, {})
        bucket[category] = bucket.get(category, 0) + 1
    return out


def count(session: Session) -> int:
    return int(session.scalar(select(func.count(MessageRow.id))) or 0)


def set_feedback(session: Session, message_id: int, user_id: int, is_spam: bool) -> Feedback:
    row = session.scalar(select(Feedback).where(Feedback.message_id == message_id,
                                                Feedback.user_id == user_id))
    if row is None:
        row = Feedback(message_id=message_id, user_id=user_id, is_spam=is_spam, created=time.time())
        session.add(row)
    elif row.is_spam != is_spam:
        row.is_spam = is_spam
        row.applied = None
        row.created = time.time()
    session.flush()
    return row


def feedback_for(session: Session, message_ids: list[int], user_id: int) -> dict[int, Feedback]:
    if not message_ids:
        return {}
    rows = session.scalars(select(Feedback).where(Feedback.message_id.in_(message_ids),
                                                  Feedback.user_id == user_id))
    return {r.message_id: r for r in rows}


def pending(session: Session) -> list[tuple[Feedback, MessageRow]]:
    rows = session.execute(select(Feedback, MessageRow).join(MessageRow, Feedback.message_id == MessageRow.id)
                           .where(Feedback.applied.is_(None)))
    return [(fb, msg) for fb, msg in rows]


def purge_older_than(session: Session, days: int) -> int:
    cutoff = time.time() - days * 86400
    result = session.execute(delete(MessageRow).where(MessageRow.ts < cutoff))
    return int(result.rowcount or 0)
