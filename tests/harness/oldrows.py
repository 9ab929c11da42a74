"""Rows an operator's database held at each schema revision, written with that revision's SQL.

``ROWS[revision]`` inserts what a site running that revision had written by then: users with
argon2 passwords, addresses, allow/block entries, message-log rows with token blobs in the
format of their day, feedback, quarantine items with their held copies, web sessions, the
learning ledger, personal layers, published models.  Only INSERTs, with the columns the
revision had, so a test can check that every one of them is still there after upgrading
(tests/unit/test_upgrade_path.py).  A new migration adds its revision here; that test fails
until it does.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import column, func, insert, select, table, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

T0 = 1_764_000_000.0  # 2025-11-24: when these rows were written (kept by every retention below)
FAR = 4_102_444_800.0  # 2100-01-01: web sessions that have not expired
# login: (password, argon2id hash with the small parameters of an old install, revision of the row)
PASSWORDS = {
    "alice": ("alice old pass 0001", "$argon2id$v=19$m=8192,t=2,p=1$BMaUPBBgWr16tFqdw9yLBQ$"
              "XkY/1oS/ldVCss2zhAFfWHNlrpM5HbnALqLk2ZoH1i0", "0001"),
    "root": ("root old pass 0001", "$argon2id$v=19$m=8192,t=2,p=1$XIvhTG9ZLyxrjhAG66KM/w$"
             "9q4A/W5/l0dWw7QdmA7PcPohgO6KxEGfzpDJeVZDbCA", "0001"),
    "carol": ("carol old pass 0002", "$argon2id$v=19$m=8192,t=2,p=1$hC3qfgPmdIh2kRCcT1Bmew$"
              "nhNlLl1nyJQcIkj2Q7kdYhhvZX1NUZf0lf9QVtEhbwQ", "0002"),
    "dave": ("dave old pass 0006", "$argon2id$v=19$m=8192,t=2,p=1$z9ly+s66GEdL1rBDNJcwyw$"
             "sdsycm7ytDWhn1YYEscSsgjN9dTtDQt6jZrATdezvKw", "0006"),
}
WEB_KEY = "5e" * 32  # the web UI's secret key the first node stored at 0010
WEB_TOKEN = "cookie-of-alice-from-revision-0003"  # the cookie; the row holds its SHA-256
ALICE = "alice@corp.example"
CAROL = "carol@corp.example"
DAVE = "dave@corp.example"
HELD_FROM = "Prize Office <prize@lottery.example>"
HELD_AT = ("0002", "0003", "0008", "0009")  # the revisions whose rows hold a quarantine item
FEEDBACK_TOKENS = frozenset({"sub:meeting", "agenda", "minutes", "url:intranet.corp.example"})
LEDGER_TOKENS = {  # (scope, tokens, spam?) of the ledger rows written at 0005 and 0007
    "0005": [("", frozenset({"free", "money", "sub:winner"}), True),
             ("alice", frozenset({"free", "money", "sub:winner"}), True)],
    "0007": [("", frozenset({"quarterly", "report", "from:cfo"}), False)],
}


@dataclass(frozen=True)
class PublishedModel:
    """A model's files as `stronghold train` wrote them (published into model_versions at 0005)."""

    passport: str
    table: bytes
    version: str


def held_copy(revision: str) -> bytes:
    """The raw message a quarantine item of ``revision`` holds."""
    return (f"From: {HELD_FROM}\r\nTo: {ALICE}\r\nSubject: You won ({revision})\r\n"
            f"Message-ID: <held-{revision}@lottery.example>\r\n\r\nClaim your prize now.\r\n").encode()


def _newline_blob(tokens: Iterable[str]) -> bytes:
    """A token blob as written until 2026-11-30 16:53 (revisions up to 0006): zlib, newline-separated."""
    return zlib.compress("\n".join(sorted(tokens)).encode(), 6)


def _nul_blob(tokens: Iterable[str]) -> bytes:
    """A token blob as written from then until 2026-12-01 (0007 to 0009): zlib, NUL-led and -separated."""
    return zlib.compress(("\x00" + "\x00".join(sorted(tokens))).encode(), 1)


def _insert(conn: Connection, name: str, /, **values: object) -> None:
    """INSERT INTO name (the given columns only) VALUES (...)."""
    conn.execute(insert(table(name, *map(column, values))).values(values))


def _user(conn: Connection, uid: int, login: str, role: str = "user", **later: object) -> None:
    _insert(conn, "users", id=uid, login=login, password_hash=PASSWORDS[login][1], role=role, disabled=False,
            created=T0, **later)


def _message(conn: Connection, mid: int, sender: str, rcpt: str, blob: bytes | None, category: str,
             action: str) -> None:
    _insert(conn, "messages", id=mid, ts=T0 + mid, queue_id=f"Q{mid:04d}", client_ip="192.0.2.7", sender=sender,
            header_from=sender, subject=f"logged {mid}", size=1234, score=0.42 if category == "clean" else 0.97,
            threshold=0.5, category=category, action=action, virus="", reasons="", trace="model 0.42",
            tokens=blob)
    _insert(conn, "message_recipients", id=mid, message_id=mid, address=rcpt, category=category, action=action,
            reason="")


def _held(conn: Connection, iid: int, revision: str, **later: object) -> None:
    raw = held_copy(revision)
    digest = hashlib.sha256(raw).hexdigest()
    _insert(conn, "quarantine_blobs", sha256=digest, size=len(raw), data=zlib.compress(raw, 6), touched=T0)
    _insert(conn, "quarantine_items", id=iid, ts=T0 + iid, recipient=ALICE, sender="bounce@lottery.example",
            subject=f"You won ({revision})", queue_id=f"H{iid:04d}", score=0.99, category="spam",
            reason="spam 0.99 >= 0.5", trace="model 0.99", virus=None, size=len(raw), sha256=digest,
            released=None, released_by=None, delivered=None, **later)


def _ledger(conn: Connection, revision: str, first_id: int, blob: Callable[[Iterable[str]], bytes],
            **later: object) -> None:
    for n, (scope, tokens, spam) in enumerate(LEDGER_TOKENS[revision]):
        digest = hashlib.sha256("\n".join(sorted(tokens)).encode()).hexdigest()
        _insert(conn, "learned_messages", id=first_id + n, content_hash=digest, scope=scope, label=spam,
                applied=None, source="web", who="alice", created=T0 + n, updated=T0 + n, tokens=blob(tokens),
                **later)


def rows_0001(conn: Connection, model: PublishedModel) -> None:
    _user(conn, 1, "alice")
    _user(conn, 2, "root", role="admin")
    _insert(conn, "addresses", id=1, address=ALICE, user_id=1)
    _insert(conn, "list_entries", id=1, owner=ALICE, kind="allow", pattern="friend@friend.example",
            comment="only when authenticated", created=T0)
    _insert(conn, "list_entries", id=2, owner="", kind="block", pattern="@spammer.example", comment="global",
            created=T0)
    _insert(conn, "meta", key="lists_version", value=2)
    _message(conn, 1, "colleague@corp.example", ALICE, _newline_blob(FEEDBACK_TOKENS), "clean", "accept")
    _insert(conn, "feedback", id=1, message_id=1, user_id=1, is_spam=True, created=T0, applied=None)


def rows_0002(conn: Connection, model: PublishedModel) -> None:
    _user(conn, 3, "carol", digest="weekly", digest_sent=T0)
    _held(conn, 1, "0002")


def rows_0003(conn: Connection, model: PublishedModel) -> None:
    _insert(conn, "addresses", id=2, address=CAROL, user_id=3, since=T0)
    _insert(conn, "released_addresses", address="left@corp.example", released=T0)
    _insert(conn, "web_sessions", id=hashlib.sha256(WEB_TOKEN.encode()).hexdigest(), user_id=1, created=T0,
            expires=FAR)
    _insert(conn, "rate_limits", key="login:alice", count=1, expires=T0 + 60)
    _held(conn, 2, "0003")


def rows_0004(conn: Connection, model: PublishedModel) -> None:
    _insert(conn, "list_entries", id=3, owner=ALICE, kind="allow", pattern="news@shop.example",
            comment="cannot sign", created=T0, trust_unauthenticated=True)


def rows_0005(conn: Connection, model: PublishedModel) -> None:
    _ledger(conn, "0005", 1, _newline_blob)
    _insert(conn, "model_versions", version=model.version, published=T0, active=True, passport=model.passport,
            table=zlib.compress(model.table, 6))
    _insert(conn, "model_nodes", node="mx1", version=model.version, seen=T0, error="")
    _insert(conn, "model_events", id=1, ts=T0, action="promoted", version=model.version, who="root",
            reason="first model")
    # alice's personal layer: two buckets, written as personal.Layer.pack has always packed it
    layer = (2).to_bytes(4, "little") + (7).to_bytes(8, "little") + (99).to_bytes(8, "little") + bytes(8)
    _insert(conn, "personal_layers", scope="alice", updated=T0, messages=1, data=layer)


def rows_0006(conn: Connection, model: PublishedModel) -> None:
    _user(conn, 4, "dave", digest="off", digest_sent=None, spam_threshold=0.7)
    _insert(conn, "addresses", id=3, address=DAVE, user_id=4, since=T0)


def rows_0007(conn: Connection, model: PublishedModel) -> None:
    _ledger(conn, "0007", 3, _nul_blob, set_aside=False)
    _message(conn, 2, "boss@corp.example", ALICE, _nul_blob({"budget", "sub:plan"}), "clean", "accept")


def rows_0008(conn: Connection, model: PublishedModel) -> None:
    _held(conn, 3, "0008", header_from=HELD_FROM)


def rows_0009(conn: Connection, model: PublishedModel) -> None:
    _held(conn, 4, "0009", header_from=HELD_FROM)
    _message(conn, 3, "x@spammer.example", ALICE, _nul_blob({"cheap", "pills"}), "blocked", "reject")


def advance_sequences(conn: Connection) -> None:
    """On PostgreSQL, move each id sequence past the ids given above, as the application's own
    inserts (which leave the id to the database) would have moved it."""
    if conn.dialect.name != "postgresql":
        return
    for where, name in conn.execute(text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'")).all():
        after: Select[tuple[int]] = select(func.coalesce(func.max(column(name)), 0) + 1).select_from(table(where))
        conn.execute(select(func.setval(func.pg_get_serial_sequence(where, name), after.scalar_subquery(), False)))


def rows_0010(conn: Connection, model: PublishedModel) -> None:
    _insert(conn, "site_keys", name="web", value=WEB_KEY, created=T0)


ROWS: dict[str, Callable[[Connection, PublishedModel], None]] = {
    "0001": rows_0001, "0002": rows_0002, "0003": rows_0003, "0004": rows_0004, "0005": rows_0005,
    "0006": rows_0006, "0007": rows_0007, "0008": rows_0008, "0009": rows_0009, "0010": rows_0010,
}


def model_files(live: Path, version: str) -> PublishedModel:
    """The passport and table `stronghold train` wrote at ``live`` (model.joblib), of ``version``."""
    return PublishedModel(live.with_suffix(".json").read_text(), live.with_suffix(".npy").read_bytes(), version)
