"""The message log: one row per message the filter decided, one per recipient."""

from __future__ import annotations

import calendar
import functools
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import zstandard
from sqlalchemy import ColumnDefault, Connection, CursorResult, Table, and_, delete, false, func, insert, or_, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql.elements import ColumnElement

from stronghold import nativecore
from stronghold.headers import recorded_froms
from stronghold.message import ParsedMessage
from stronghold.store.tables import Feedback, MessageRecipient, MessageRow
from stronghold.verdict import Category, Envelope, Verdict

_NUL = "\x00"  # leads a blob of NUL-separated tokens (blobs before it: newline-separated)
_JSON = "\x01"  # leads a JSON list: a token held a NUL itself
_ZSTD = b"\x28\xb5\x2f\xfd"  # a Zstandard frame's magic; older blobs are zlib streams (0x78 ...)
_codecs = threading.local()  # a Zstandard context is not for two threads at once


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    try:
        return _codecs.pair
    except AttributeError:
        _codecs.pair = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
        return _codecs.pair


def pack_tokens(tokens: Iterable[str]) -> bytes:
    """A message's tokens as stored: a set, so in no order (sorting them cost a third of
    packing for blobs a tenth smaller).  Separated by NUL, which mail text hardly ever
    yields (a token can hold a line break: a URL folded across lines); when one does
    hold a NUL, the blob is a JSON list instead.  Compressed with Zstandard level 3:
    blobs as small as zlib level 1's (1.46 kB against 1.51 on corpus mail) for about
    40 % of its CPU (``python -m bench.stages``)."""
    listed = list(tokens)  # read once: an iterator would be spent by the first try
    data = _joined(listed)
    if data is None:
        data = (_JSON + json.dumps(listed)).encode()
    return _zstd()[0].compress(data)


def _joined_py(tokens: Iterable[str]) -> bytes | None:
    """The NUL-separated text of a blob, UTF-8; None when a token holds a NUL, or for no token
    (a JSON list then).  ``_joined`` is this, in C when built."""
    listed = list(tokens)
    text = _NUL + _NUL.join(listed)
    return text.encode() if text.count(_NUL) == len(listed) else None


_wordcore = nativecore.load("wordcore")
_joined: Callable[[Iterable[str]], bytes | None] = _wordcore.joined if _wordcore is not None else _joined_py


def unpack_tokens(blob: bytes) -> set[str]:
    """The tokens ``pack_tokens`` stored (also of zlib blobs, and of blobs written before NUL
    separation)."""
    raw = _zstd()[1].decompress(blob) if blob[:4] == _ZSTD else zlib.decompress(blob)
    text = raw.decode()
    if text.startswith(_NUL):
        return set(text[1:].split(_NUL))  # no token is a JSON blob: a lone NUL is one empty token
    if text.startswith(_JSON):
        return set(json.loads(text[1:]))
    return set(text.split("\n"))


@dataclass(frozen=True)
class LogEntry:
    """One message's rows, ready to insert: built where the verdict is, written in batches."""

    message: dict[str, Any]
    recipients: list[dict[str, Any]]


def entry(envelope: Envelope, msg: ParsedMessage, verdict: Verdict, tokens: Iterable[str] | None = None,
          ts: float | None = None) -> LogEntry:
    """The log rows of a verdict: the message and one row per recipient."""
    values = {
        "ts": ts if ts is not None else time.time(), "queue_id": envelope.queue_id[:40],
        "client_ip": envelope.client_ip[:64], "sender": envelope.sender[:320],
        "header_from": recorded_froms(msg.header_all("from")), "subject": (msg.header("subject") or "")[:200],
        "size": msg.size, "score": verdict.score, "threshold": verdict.threshold,
        "category": verdict.category.value, "action": verdict.action.value, "virus": verdict.virus or "",
        "reasons": " ".join(verdict.reasons)[:4000], "trace": verdict.summary[:4000],
        "tokens": pack_tokens(tokens) if tokens is not None else None,
    }
    recipients = [{"address": d.recipient[:320], "category": d.category.value, "action": d.action.value,
                   "reason": d.reason[:200]} for d in verdict.decisions]
    return LogEntry(values, recipients)


def rcpt_reject_entry(envelope: Envelope, recipient: str, why: str, trace: str) -> LogEntry:
    """A recipient refused at RCPT time (no message content exists yet)."""
    values = {"ts": time.time(), "queue_id": envelope.queue_id[:40], "client_ip": envelope.client_ip[:64],
              "sender": envelope.sender[:320], "header_from": "", "subject": "", "size": 0, "score": None,
              "threshold": None, "category": "blocked", "action": "reject", "virus": "", "reasons": why,
              "trace": trace[:4000], "tokens": None}
    return LogEntry(values, [{"address": recipient[:320], "category": "blocked", "action": "reject",
                              "reason": why[:200]}])


_MESSAGES = cast(Table, MessageRow.__table__)
_RECIPIENTS = cast(Table, MessageRecipient.__table__)
_INSERT_MESSAGES = insert(_MESSAGES).returning(_MESSAGES.c.id, sort_by_parameter_order=True)
# RETURNING (ids unused) makes SQLAlchemy send the rows as one multi-row INSERT
# ("insertmanyvalues"); without it psycopg runs one INSERT per recipient row, the
# statement PostgreSQL spent most of its time on (bench.cluster, docs/scaling.md).
_INSERT_RECIPIENTS = insert(_RECIPIENTS).returning(_RECIPIENTS.c.id)
_TABLES = {t.name: t for t in (_MESSAGES, _RECIPIENTS)}


def write(session: Session, entries: Sequence[LogEntry]) -> list[int]:
    """Insert ``entries`` with two statements in all; returns the message ids in order.

    Plain Core statements built once: this runs for every message, and building
    an ORM insert per message cost more CPU than deciding about the message.  A
    column an entry leaves out gets what the ORM would give it (``_complete``).
    """
    if not entries:
        return []
    conn = session.connection()
    messages = [_complete(_MESSAGES, e.message) for e in entries]
    if conn.dialect.name == "sqlite":
        return _write_sqlite(conn, messages, [e.recipients for e in entries])
    ids = [int(i) for i in conn.execute(_INSERT_MESSAGES, messages).scalars()]
    rows = [_complete(_RECIPIENTS, {**r, "message_id": mid})
            for e, mid in zip(entries, ids, strict=True) for r in e.recipients]
    if rows:
        conn.execute(_INSERT_RECIPIENTS, rows)
    return ids


def _write_sqlite(conn: Connection, messages: Sequence[dict[str, Any]],
                  recipients: Sequence[Sequence[Mapping[str, Any]]]) -> list[int]:
    """SQLite: each message row by a plain driver statement, its id the row's own rowid; the
    recipients in one executemany.  On SQLite, RETURNING keeps no order, so SQLAlchemy sends
    the rows of ``_INSERT_MESSAGES`` one by one anyway, at twice the CPU of this (the store
    thread's cost per message; docs/operations.md).  Errors come out as SQLAlchemy's, as before."""
    ids: list[int] = []
    grouped: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for message, rows in zip(messages, recipients, strict=True):
        mid = conn.exec_driver_sql(_sqlite_insert(_MESSAGES.name, tuple(message)),
                                   tuple(message.values())).lastrowid
        ids.append(int(mid))
        for r in rows:
            row = _complete(_RECIPIENTS, {"message_id": mid, **r})
            grouped.setdefault(tuple(row), []).append(tuple(row.values()))
    for keys, values in grouped.items():
        conn.exec_driver_sql(_sqlite_insert(_RECIPIENTS.name, keys), values)
    return ids


def _complete(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each column they leave out given what an ORM insert would store: the
    column's Python-side default (called per row when it is a function, as ``time.time``), NULL
    where it has none.  A column with neither (NOT NULL, no default) stays out, for the
    database to refuse as it refuses the ORM's row."""
    missing = _missing(table.name, tuple(values))
    if not missing:
        return values
    return {**values, **{name: arg(None) if call else arg for name, call, arg in missing}}


@functools.lru_cache(maxsize=64)
def _missing(table: str, keys: tuple[str, ...]) -> tuple[tuple[str, bool, Any], ...]:
    """(name, call, value) of each column of ``table`` that ``keys`` leave out and that
    ``_complete`` fills: ``call``: ``value`` is the default's function (SQLAlchemy's wrapper,
    taking an execution context we do not have, so None)."""
    filled: list[tuple[str, bool, Any]] = []
    for column in _TABLES[table].c:
        if column.name in keys or column.primary_key or column.server_default is not None:
            continue
        default = column.default
        if default is None:
            if column.nullable:
                filled.append((column.name, False, None))
        elif isinstance(default, ColumnDefault) and (default.is_scalar or default.is_callable):
            filled.append((column.name, default.is_callable, default.arg))
        else:  # a sequence or SQL expression: not ours to evaluate
            raise TypeError(f"{table}.{column.name}: the message log's insert cannot apply {default!r}")
    return tuple(filled)


@functools.lru_cache(maxsize=16)
def _sqlite_insert(table: str, keys: tuple[str, ...]) -> str:
    """INSERT INTO ``table`` (``keys``) with one ? per key; only the table's own columns."""
    columns = _TABLES[table].c
    unknown = [k for k in keys if k not in columns]
    if unknown:
        raise ValueError(f"not columns of {table}: {unknown}")
    names, marks = ", ".join(keys), ", ".join("?" * len(keys))
    return f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608 - our own names, checked; values bound


def record(session: Session, envelope: Envelope, msg: ParsedMessage, verdict: Verdict,
           tokens: Iterable[str] | None = None, ts: float | None = None) -> int:
    """Log one verdict now; returns the message id."""
    return write(session, [entry(envelope, msg, verdict, tokens, ts)])[0]


def _received_by(addresses: Sequence[str], since: Mapping[str, float] | None,
                 category: str = "") -> ColumnElement[bool]:
    """Messages one of ``addresses`` received, each from its ``since`` time (a previous owner's
    mail stays theirs); with ``category``, only where that is what the filter decided for one of
    them (not the message's category, which another recipient's decision may set)."""
    since = since or {}
    plain = [a for a in addresses if not since.get(a)]
    conditions: list[ColumnElement[bool]] = [MessageRecipient.address.in_(plain)] if plain else []
    conditions += [and_(MessageRecipient.address == a, MessageRow.ts >= since[a])
                   for a in addresses if since.get(a)]
    if not conditions:
        return false()
    received = or_(*conditions)
    if category:
        received = and_(received, MessageRecipient.category == category)
    return MessageRow.id.in_(select(MessageRecipient.message_id).where(received))


_CATEGORY_ORDER = tuple(c.value for c in Category)


def viewer_category(message_category: str, theirs: Iterable[str]) -> str:
    """What the filter decided for one person, from their recipients' categories: the one there is;
    of several, the message's when it is among them, else the first in ``Category``'s order; the
    message's when they had none (an admin looking at anyone's mail)."""
    mine = set(theirs)
    if len(mine) == 1:
        return mine.pop()
    if not mine or message_category in mine:
        return message_category
    return min(mine, key=lambda c: _CATEGORY_ORDER.index(c) if c in _CATEGORY_ORDER else len(_CATEGORY_ORDER))


@dataclass(frozen=True)
class LogFilter:
    """What ``recent`` lists: whose mail, which category, a search, a day and a page."""

    addresses: tuple[str, ...] | None = None  # None: everyone (admins)
    category: str = ""
    limit: int = 100
    offset: int = 0
    since: Mapping[str, float] = field(default_factory=dict)  # per address: mail from then on
    search: str = ""  # in the sender, From header or subject
    day: str = ""  # YYYY-MM-DD (UTC)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"


def recent(session: Session, flt: LogFilter) -> list[MessageRow]:
    """Log rows matching ``flt`` with their recipients, newest first."""
    query = select(MessageRow).options(selectinload(MessageRow.recipients))
    if flt.addresses is not None:
        query = query.where(_received_by(flt.addresses, flt.since, flt.category))
    elif flt.category:
        query = query.where(MessageRow.category == flt.category)
    if flt.search:
        like = _like(flt.search.lower())
        query = query.where(or_(*(func.lower(col).like(like, escape="\\")
                                  for col in (MessageRow.sender, MessageRow.header_from, MessageRow.subject))))
    if flt.day:
        start = calendar.timegm(time.strptime(flt.day, "%Y-%m-%d"))
        query = query.where(MessageRow.ts >= start, MessageRow.ts < start + 86400)
    query = query.order_by(MessageRow.ts.desc(), MessageRow.id.desc()).limit(flt.limit).offset(flt.offset)
    return list(session.scalars(query))


def visible_message(session: Session, message_id: int, addresses: tuple[str, ...] | None,
                    since: Mapping[str, float] | None = None) -> MessageRow | None:
    """The message if one of ``addresses`` received it while theirs (None: any, for admins)."""
    row = session.get(MessageRow, message_id)
    if row is None:
        return None
    since = since or {}
    if addresses is not None and not any(r.address in addresses and row.ts >= since.get(r.address, 0.0)
                                         for r in row.recipients):
        return None
    return row


def daily_counts(session: Session, addresses: tuple[str, ...] | None, days: int = 30,
                 since: Mapping[str, float] | None = None) -> dict[str, dict[str, int]]:
    """{YYYY-MM-DD: {category: count}} for the last ``days`` days (UTC); with ``addresses``, each
    message counted once under what the filter decided for them (``viewer_category``)."""
    start = time.time() - days * 86400
    if addresses is None:
        rows: Iterable[tuple[float, str]] = (
            (ts, category) for ts, category in session.execute(
                select(MessageRow.ts, MessageRow.category).where(MessageRow.ts >= start)))
    else:
        mine: dict[int, tuple[float, str, list[str]]] = {}
        query = (select(MessageRow.id, MessageRow.ts, MessageRow.category, MessageRecipient.address,
                        MessageRecipient.category)
                 .join(MessageRecipient, MessageRecipient.message_id == MessageRow.id)
                 .where(MessageRow.ts >= start, _received_by(addresses, since),
                        MessageRecipient.address.in_(addresses)))
        for mid, ts, category, address, theirs in session.execute(query):
            entry = mine.setdefault(mid, (ts, category, []))
            if ts >= (since or {}).get(address, 0.0):
                entry[2].append(theirs)
        rows = [(ts, viewer_category(category, theirs)) for ts, category, theirs in mine.values()]
    out: dict[str, dict[str, int]] = {}
    for ts, category in rows:
        day = time.strftime("%Y-%m-%d", time.gmtime(ts))
        bucket = out.setdefault(day, {})
        bucket[category] = bucket.get(category, 0) + 1
    return out


def count(session: Session) -> int:
    """How many messages the log holds."""
    return int(session.scalar(select(func.count(MessageRow.id))) or 0)


def set_feedback(session: Session, message_id: int, user_id: int, is_spam: bool) -> Feedback:
    """Record that user ``user_id`` marked message ``message_id`` spam or not; a changed mark
    is to be applied again."""
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
    """{message id: that user's mark} for the messages among ``message_ids`` they marked."""
    if not message_ids:
        return {}
    rows = session.scalars(select(Feedback).where(Feedback.message_id.in_(message_ids),
                                                  Feedback.user_id == user_id))
    return {r.message_id: r for r in rows}


def pending(session: Session) -> list[tuple[Feedback, MessageRow]]:
    """(mark, its message) of every mark not yet taken into training, oldest first: where two users
    marked one message differently, the later mark is recorded last and wins, as in the ledger."""
    rows = session.execute(select(Feedback, MessageRow).join(MessageRow, Feedback.message_id == MessageRow.id)
                           .where(Feedback.applied.is_(None)).order_by(Feedback.created, Feedback.id))
    return [(fb, msg) for fb, msg in rows]


def mark_applied(session: Session, feedback_ids: Iterable[int], now: float | None = None, *,
                 as_read: Mapping[int, float] | None = None) -> None:
    """Feedback taken into training (each row once: an applied row keeps its time).  With
    ``as_read`` ({id: its ``created`` when training read it}), a mark changed since (``set_feedback``
    gives a changed mark a new ``created``) is left pending: training took in the old one."""
    for fid in feedback_ids:
        row = session.get(Feedback, fid, with_for_update=as_read is not None)
        if row is not None and row.applied is None and (as_read is None or row.created == as_read[fid]):
            row.applied = time.time() if now is None else now


def feedback_marks(session: Session) -> list[tuple[str, bool, float]]:
    """(category the filter gave, marked spam, when marked) of every mark."""
    return [(str(cat), bool(spam), float(created)) for cat, spam, created in session.execute(
        select(MessageRow.category, Feedback.is_spam, Feedback.created)
        .join(MessageRow, Feedback.message_id == MessageRow.id))]


def latest_for_recipient(session: Session, queue_id: str, recipient: str) -> int | None:
    """The newest log row of message ``queue_id`` to ``recipient``, if it is still kept."""
    if not queue_id:
        return None
    return session.scalar(
        select(MessageRow.id).join(MessageRecipient, MessageRecipient.message_id == MessageRow.id)
        .where(MessageRow.queue_id == queue_id, MessageRecipient.address == recipient)
        .order_by(MessageRow.id.desc()).limit(1))


def purge_older_than(session: Session, days: int) -> int:
    """Delete log rows (and their recipients and marks) older than ``days``; returns how many."""
    cutoff = time.time() - days * 86400
    result = cast(CursorResult[Any], session.execute(delete(MessageRow).where(MessageRow.ts < cutoff)))
    return int(result.rowcount or 0)
