"""The message log's fast insert (a plain driver statement on SQLite, Core executemany on
PostgreSQL) must give every column what the ORM would: the tables' Python-side defaults included."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stronghold.engine import Findings, decide
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.store import entries, messagelog
from stronghold.store.db import Store
from stronghold.store.tables import MessageRecipient, MessageRow
from stronghold.verdict import Envelope

# A log entry that names only the columns without a default: the rest is the table's to fill.
BARE = messagelog.LogEntry({"category": "spam", "action": "reject", "score": 0.93},
                           [{"address": "a@example.com", "category": "spam", "action": "reject"},
                            {"address": "b@example.com", "category": "spam", "action": "reject",
                             "reason": "own reason"}])


def _full() -> messagelog.LogEntry:
    msg = parse(b"From: Friend <f@pal.example>\r\nSubject: hello\r\n\r\nbody")
    env = Envelope("f@pal.example", ("a@example.com", "b@example.com"), queue_id="QP", client_ip="192.0.2.7")
    verdict = decide(env, msg, Findings(lists=entries.ListIndex([])), Policy())
    return messagelog.entry(env, msg, verdict, {"tok1", "tok2"}, ts=1_700_000_000.5)


def _by_orm(s: Session, e: messagelog.LogEntry) -> int:
    row = MessageRow(**e.message, recipients=[MessageRecipient(**r) for r in e.recipients])
    s.add(row)
    s.flush()
    return row.id


def _columns(s: Session, mid: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every column of the message row and of its recipients (in insert order), ids left out."""
    message = dict(s.execute(select(*MessageRow.__table__.c).where(MessageRow.id == mid)).one()._mapping)
    recipients = [dict(r._mapping) for r in s.execute(select(*MessageRecipient.__table__.c)
                                                       .where(MessageRecipient.message_id == mid)
                                                       .order_by(MessageRecipient.id))]
    del message["id"]
    for r in recipients:
        del r["id"], r["message_id"]
    return message, recipients


def test_fast_insert_gives_every_column_what_the_orm_gives(store: Store) -> None:
    full = _full()
    before = time.time()
    with store.session() as s:
        fast = messagelog.write(s, [full, BARE, full])  # key sets mixed in one batch
        slow = [_by_orm(s, e) for e in (full, BARE)]
    after = time.time()
    with store.session() as s:
        got = [_columns(s, mid) for mid in fast]
        want = [_columns(s, mid) for mid in slow]
    assert got[0] == want[0] and got[2] == want[0]
    bare_fast, bare_orm = got[1], want[1]
    for message in (bare_fast[0], bare_orm[0]):  # ts: time.time() when written, on both paths
        assert before <= message.pop("ts") <= after
    assert bare_fast == bare_orm
    message, recipients = bare_fast  # and the defaults really are the table's, not NULLs
    assert message["queue_id"] == message["header_from"] == message["virus"] == message["trace"] == ""
    assert message["size"] == 0 and message["threshold"] is None and message["tokens"] is None
    assert [r["reason"] for r in recipients] == ["", "own reason"]
