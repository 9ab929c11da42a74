"""An operator's upgrade keeps their data: a database at each earlier revision, filled as a site
running that revision filled it (tests/harness/oldrows.py), upgraded to the newest revision on
SQLite and on a real PostgreSQL, keeps every row, and today's code uses them: old passwords log in,
web sessions last, the lists decide mail in the engine, held copies are released, learning takes
the old marks, a published model is pulled.  A new migration is covered by itself: its revision
joins the parameters, and the test fails until oldrows.ROWS has its rows.

The case of each revision takes the rows written at it through every later migration; there the
costly checks of those rows run (logins, learning), while later cases check them unchanged."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from stronghold import config as config_mod
from stronghold import feedback, learning, modelsync, personal, release
from stronghold.classifier import Model
from stronghold.cli import main
from stronghold.cli_scan import check
from stronghold.config import Config
from stronghold.modelfile import passport_version, read_passport
from stronghold.service import Service
from stronghold.store import accounts, entries, ledger, messagelog, quarantine, sitekeys
from stronghold.store.db import MIGRATIONS, Store
from stronghold.verdict import Category, Envelope
from tests.harness import oldrows
from tests.harness.smtpsink import SmtpSink

_cfg = AlembicConfig()
_cfg.set_main_option("script_location", str(MIGRATIONS))
REVISIONS = [s.revision for s in reversed(list(ScriptDirectory.from_config(_cfg).walk_revisions()))]
KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
GATEWAY = "gw.test.example"
_names = count(1)

Snapshot = dict[str, tuple[list[str], Counter]]


def test_every_revision_has_rows_of_its_own() -> None:
    """A migration added without rows a site would have written at it fails here."""
    assert REVISIONS[0] == "0001" and len(REVISIONS) >= 9
    assert list(oldrows.ROWS) == REVISIONS


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, oldrows.PublishedModel]:
    """A small model trained by `stronghold train` (its files are published at revision 0005)."""
    home = tmp_path_factory.mktemp("trained")
    (home / "m").mkdir()
    for i in range(6):
        (home / "m" / f"h{i}").write_text(f"Subject: meeting {i}\n\nagenda minutes project {i}\n")
        (home / "m" / f"s{i}").write_text(f"Subject: WIN cash {i}\n\nfree money click now {i}\n")
    (home / "index").write_text("".join(f"ham m/h{i}\nspam m/s{i}\n" for i in range(6)))
    live = home / "models" / "model.joblib"
    live.parent.mkdir()
    assert main(["train", "--index", str(home / "index"), "--model", str(live)]) == 0
    return live, oldrows.model_files(live, passport_version(read_passport(live)))


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


def empty_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A new, empty database of ``kind``."""
    if kind == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'old.db'}")
    return Store(request.getfixturevalue("postgres").create_database(f"up{os.getpid()}_{next(_names)}"))


def snapshot(conn: Connection) -> Snapshot:
    """Every table's columns and rows (as a multiset) but alembic's."""
    out: Snapshot = {}
    for name in inspect(conn).get_table_names():
        if name != "alembic_version":  # names from the database's own catalogue
            result = conn.exec_driver_sql(f'SELECT * FROM "{name}"')  # noqa: S608
            out[name] = (list(result.keys()), Counter(tuple(row) for row in result))
    return out


def fill_up_to(store: Store, last: str, model: oldrows.PublishedModel) -> Snapshot:
    """Migrate revision by revision to ``last``, writing each revision's rows with its own SQL;
    what the database holds then.  (The rows of an earlier revision are checked from right
    after they were written in that revision's own case.)"""
    for revision in REVISIONS[:REVISIONS.index(last) + 1]:
        assert store.upgrade(revision) == revision
        with store.engine.begin() as conn:
            oldrows.ROWS[revision](conn, model)
            oldrows.advance_sequences(conn)
    with store.engine.connect() as conn:
        return snapshot(conn)


def assert_rows_kept(before: Snapshot, after: Snapshot) -> None:
    """Each row is there after the upgrade, with the values it had (a NULL may be filled in)."""
    assert set(after) >= set(before)
    for name, (columns, rows) in before.items():
        now_columns, now_rows = after[name]
        where = [now_columns.index(c) for c in columns]
        projected = Counter(tuple(row[i] for i in where) for row in now_rows)
        lost = [row for row in rows - projected if not any(filled(row, now) for now in projected)]
        assert not lost, f"{name}: rows changed or gone: {lost[:3]}"


def filled(old: tuple, now: tuple) -> bool:
    """``now`` is ``old`` with NULLs filled in (by a backfill such as 0009's)."""
    return all(a is None or a == b for a, b in zip(old, now, strict=True))


def settings(live: Path, tmp_path: Path, store: Store, sink: SmtpSink) -> Config:
    return config_mod.load(None, {
        "data_dir": tmp_path / "data", "models_dir": live.parent, "model": live.name, "database_url": store.url,
        "clamd_socket": "none", "auth_mode": "header", "authserv_id": GATEWAY, "lists_refresh_seconds": 0,
        "release_smtp": f"127.0.0.1:{sink.port}", "log_retention_days": 0, "quarantine_retention_days": 0,
    }, environ={})


def mail(sender: str, authenticated: bool) -> bytes:
    auth = (f"Authentication-Results: {GATEWAY}; spf=pass smtp.mailfrom={sender}; "
            f"dkim=pass header.d={sender.split('@')[1]}; dmarc=pass header.from={sender.split('@')[1]}\r\n")
    return ((auth if authenticated else "") + f"From: <{sender}>\r\nTo: <{oldrows.ALICE}>\r\n"
            "Subject: WIN cash now\r\n\r\nfree money click now\r\n").encode()


def category_for_alice(service: Service, sender: str, authenticated: bool) -> Category:
    verdict = check(service, Envelope(sender, (oldrows.ALICE,), "192.0.2.9", ""), [mail(sender, authenticated)])
    [decision] = verdict.decisions
    return decision.category


def assert_lists_decide_mail(cfg: Config, store: Store, since: int) -> None:
    service = Service(cfg, store)
    try:
        assert category_for_alice(service, "x@spammer.example", True) is Category.BLOCKED
        assert category_for_alice(service, "friend@friend.example", True) is Category.ALLOWED
        assert category_for_alice(service, "friend@friend.example", False) is not Category.ALLOWED
        if since >= REVISIONS.index("0004"):
            assert category_for_alice(service, "news@shop.example", False) is Category.ALLOWED
    finally:
        service.db.drain(timeout=5)


def assert_accounts_work(cfg: Config, store: Store, since: int) -> None:
    # Each user logs in in the case of the revision that wrote it (a login rehashes the old argon2
    # hash with today's costly parameters; in later cases the row is checked unchanged).
    logins = [login for login, (_, _, revision) in oldrows.PASSWORDS.items() if REVISIONS.index(revision) == since]
    with store.session() as s:
        assert accounts.authenticate(s, "alice", "wrong password") is None
        for login in logins:
            user = accounts.authenticate(s, login, oldrows.PASSWORDS[login][0])
            assert user is not None, f"{login} cannot log in with the password of before"
        assert accounts.get_user(s, "root").is_admin  # type: ignore[union-attr]
        assert [a.address for a in accounts.get_user(s, "alice").addresses] == [oldrows.ALICE]  # type: ignore[union-attr]
        if since >= REVISIONS.index("0002"):
            assert {u.login: u.digest for u in accounts.digest_users(s)}.get("carol") == "weekly"
        if since >= REVISIONS.index("0003"):
            user = accounts.session_user(s, oldrows.WEB_TOKEN)
            assert user is not None and user.login == "alice"
        if since >= REVISIONS.index("0006"):
            bounds = cfg.user_threshold_bounds
            assert bounds is not None and entries.address_thresholds(s, bounds) == {oldrows.DAVE: 0.7}
        if since >= REVISIONS.index("0010"):  # every web node keeps signing with the stored key
            assert sitekeys.shared(s, sitekeys.WEB, "a key another node generated") == oldrows.WEB_KEY


def assert_quarantine_releases(cfg: Config, store: Store, sink: SmtpSink, since: int) -> None:
    written = [r for r in REVISIONS[:since + 1] if r in oldrows.HELD_AT]
    with store.session() as s:
        held = quarantine.find(s, recipients=[oldrows.ALICE], limit=100)
        assert sorted(h.subject for h in held) == sorted(f"You won ({r})" for r in written)
        for item in held:
            assert quarantine.content(s, item.id) == oldrows.held_copy(item.subject[9:13])
            assert quarantine.get(s, item.id).header_from == oldrows.HELD_FROM  # type: ignore[union-attr]
    if held:
        sink.messages.clear()
        done = release.release(cfg, store, held[-1].id, by="alice")
        assert done.released is not None and done.delivered is not None
        [got] = sink.wait_for(lambda m: oldrows.ALICE in m.recipients)
        assert oldrows.held_copy(held[-1].subject[9:13]).split(b"\r\n\r\n")[1] in got.data


def assert_learning_takes_old_marks(store: Store, live: Path, tmp_path: Path, since: int) -> None:
    with store.session() as s:
        for row in messagelog.recent(s, messagelog.LogFilter()):
            assert messagelog.unpack_tokens(row.tokens or b"")
    items, mark_done, change = feedback.record_pending(store)
    assert [(frozenset(t), spam, who) for t, spam, who in items] == [(oldrows.FEEDBACK_TOKENS, True, "alice")]
    mark_done()
    assert change.new == 1
    marks = [m for r in REVISIONS[:since + 1] for m in oldrows.LEDGER_TOKENS.get(r, [])]
    if REVISIONS[since] in ("0001", *oldrows.LEDGER_TOKENS):  # the shared model takes every mark (in
        result, _ = learning.sync(store, Model.load(live, for_learning=True))  # each case that wrote some)
        assert result.added == 1 + sum(1 for scope, _, _ in marks if scope == "")
    with store.session() as s:
        mine = ledger.personal(s, ["alice"])["alice"]
    assert sorted(map(frozenset, mine[0]), key=sorted) == sorted(
        [oldrows.FEEDBACK_TOKENS] + [t for scope, t, _ in marks if scope == "alice"], key=sorted)
    if since >= REVISIONS.index("0005"):
        layers = personal.load_layers(store)
        assert list(layers[oldrows.ALICE].buckets) == [7, 99]
        dest = tmp_path / "node" / "model.joblib"
        dest.parent.mkdir()
        assert modelsync.pull(store, dest) == modelsync.active_version(store)
        Model.load(dest)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("start", REVISIONS)
def test_upgrade_from_each_revision_keeps_rows_usable(kind: str, start: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path, trained: tuple[Path, oldrows.PublishedModel],
                                                      smtp: SmtpSink) -> None:
    live, model = trained
    store = empty_store(kind, request, tmp_path)
    try:
        before = fill_up_to(store, start, model)
        assert store.upgrade() == REVISIONS[-1]
        with store.engine.connect() as conn:
            assert_rows_kept(before, snapshot(conn))
        since = REVISIONS.index(start)
        cfg = settings(live, tmp_path, store, smtp)
        assert_accounts_work(cfg, store, since)
        assert_lists_decide_mail(cfg, store, since)
        assert_quarantine_releases(cfg, store, smtp, since)
        assert_learning_takes_old_marks(store, live, tmp_path, since)
    finally:
        store.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_downgrade_to_each_revision_keeps_the_rows_it_has_room_for(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path,
        trained: tuple[Path, oldrows.PublishedModel]) -> None:
    """`stronghold db downgrade`, step by step to 0001: each revision's schema comes back with every
    row it held (a batch rebuild of users on SQLite once cascaded into addresses and feedback),
    and upgrading again lets alice log in with her addresses."""
    store = empty_store(kind, request, tmp_path)
    try:
        held: dict[str, Snapshot] = {}
        for revision in REVISIONS:
            assert store.upgrade(revision) == revision
            with store.engine.begin() as conn:
                oldrows.ROWS[revision](conn, trained[1])
                oldrows.advance_sequences(conn)
                held[revision] = snapshot(conn)
        for revision in reversed(REVISIONS[:-1]):
            assert store.downgrade(revision) == revision
            with store.engine.connect() as conn:
                now = snapshot(conn)
            assert set(now) == set(held[revision])
            assert_rows_kept(held[revision], now)
        assert store.upgrade() == REVISIONS[-1]
        with store.session() as s:
            alice = accounts.authenticate(s, "alice", oldrows.PASSWORDS["alice"][0])
            assert alice is not None and [a.address for a in alice.addresses] == [oldrows.ALICE]
    finally:
        store.dispose()
