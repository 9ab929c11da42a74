"""Migration 0009 fills the header From of items held before 0008 recorded it, on SQLite and on a
real PostgreSQL server: once, in batches, with "" for a copy that cannot be read."""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from sqlalchemy import select, update

from stronghold.headers import shorten_from
from stronghold.store import backfill, quarantine
from stronghold.store.db import Store
from stronghold.store.tables import QuarantineBlob, QuarantineItem

LONG = "L" * 400
MESSAGES = {  # raw copy -> the From the fill must record
    b"From: Spammer <s@spam.example>\r\nSubject: a\r\n\r\nbuy\r\n": "Spammer <s@spam.example>",
    b"Subject: no From at all\r\n\r\nbody\r\n": "",
    f'From: "{LONG}" <boss@bank.example>\r\n\r\nx\r\n'.encode(): shorten_from(f'"{LONG}" <boss@bank.example>'),
}
_names = count(1)


def _big() -> bytes:
    """A From after 200 KiB of headers that hardly compress, then 1 MiB more: more than the fill reads."""
    rng = random.Random(9)
    junk = b"".join(b"X-Junk: %x\r\n" % rng.getrandbits(400) for _ in range(1900))
    return junk + b"From: Late <late@far.example>\r\n\r\n" + rng.randbytes(1 << 20)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh database at revision 0008 (before the fill)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"fill{os.getpid()}_{next(_names)}")
    db = Store(url)
    assert db.upgrade("0008") == "0008"
    yield db
    db.dispose()


def _held_before_0008(s, raw: bytes, recipients: tuple[str, ...] = ("m1@example.com",)) -> list[int]:
    ids = quarantine.hold(s, raw, recipients=list(recipients), sender="env@spam.example", subject="x",
                          queue_id="Q", score=0.9, category="spam", reason="r", trace="t", virus=None)
    s.execute(update(QuarantineItem).where(QuarantineItem.id.in_(ids)).values(header_from=None))
    return ids


def _corrupt(s, recipient: str, data: bytes) -> int:
    """An item whose held copy does not decompress (or is not what it claims)."""
    digest = hashlib.sha256(data).hexdigest()
    s.add(QuarantineBlob(sha256=digest, size=len(data), data=data, touched=0.0))
    s.flush()
    [item] = _held_before_0008(s, b"placeholder", (recipient,))
    s.execute(update(QuarantineItem).where(QuarantineItem.id == item).values(sha256=digest))
    return item


def test_upgrade_fills_header_from_once_and_pages_no_longer_read_the_copies(old_store: Store) -> None:
    assert len(MESSAGES[next(k for k in MESSAGES if LONG.encode() in k)]) <= 320  # the column's size
    big = _big()
    assert len(zlib.compress(big, 6)) > backfill._PREFIX  # the fill reads only the start of it
    with old_store.session() as s:
        want = {i: v for raw, v in MESSAGES.items() for i in _held_before_0008(s, raw, ("a@x.example", "b@x.example"))}
        want.update(dict.fromkeys(_held_before_0008(s, big), "Late <late@far.example>"))
        want[_corrupt(s, "c@x.example", b"not zlib at all")] = ""
        want[_corrupt(s, "d@x.example", zlib.compress(b"\x00\xff" * 5000))] = ""  # decompresses: no header
        [recorded] = quarantine.hold(s, b"From: New <n@new.example>\r\n\r\nx", recipients=["e@x.example"],
                                     sender="", subject="", queue_id="Q", score=None, category="spam",
                                     reason="", trace="", virus=None, header_from="Kept <kept@new.example>")
        want[recorded] = "Kept <kept@new.example>"  # recorded at hold time: left as it is
        assert quarantine.with_from(s, [quarantine.get(s, recorded)])[0].header_from == "Kept <kept@new.example>"
    assert old_store.upgrade("0009") == "0009"
    with old_store.session() as s:
        s.execute(update(QuarantineBlob).values(data=b"gone"))  # a page that still read them would fail
        shown = quarantine.with_from(s, quarantine.find(s, recipients=None))
        assert {h.id: h.header_from for h in shown} == want
        assert quarantine.find(s, recipients=None, text="far.example")[0].header_from == "Late <late@far.example>"


def test_fill_reads_in_batches_and_covers_items_whose_copy_is_gone(old_store: Store) -> None:
    with old_store.session() as s:
        ids = [i for n in range(7) for i in _held_before_0008(s, b"From: <u%d@x.example>\r\n\r\nx" % n,
                                                                    ("a@x.example", "b@x.example"))]
    with old_store.engine.begin() as conn:  # an item whose blob went missing (no foreign key check)
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        else:
            conn.exec_driver_sql("SET session_replication_role = replica")
        conn.execute(update(QuarantineItem).where(QuarantineItem.id == ids[0]).values(sha256="0" * 64))
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        else:
            conn.exec_driver_sql("SET session_replication_role = DEFAULT")
    with old_store.engine.begin() as conn:
        assert backfill.quarantine_header_from(conn, batch=3) == 14
        assert backfill.quarantine_header_from(conn, batch=3) == 0  # nothing left to read
    with old_store.session() as s:
        got = dict(s.execute(select(QuarantineItem.id, QuarantineItem.header_from)).all())
    assert got == {i: "" if i == ids[0] else f"<u{(ids.index(i)) // 2}@x.example>" for i in ids}
