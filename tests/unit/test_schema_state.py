"""`stronghold db ...` and the services' start on a database this release cannot simply use: newer
than the code (a downgraded package, an old node of a rolling upgrade), Stronghold's tables
without a revision, half-migrated, or empty.  Each gets one clear line and an exit code, never a
traceback, never a silent start; nothing in the database changes."""

from __future__ import annotations

import logging
import os
import sqlite3
from itertools import count
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, text

from stronghold.cli import main
from stronghold.cli_services import schema_line
from stronghold.store import schema
from stronghold.store.db import Store
from stronghold.store.errors import StoreError

KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
HEAD = schema.head()  # this release's newest revision
PREVIOUS = schema.revisions()[-2]
NEWER = f"{int(HEAD) + 1:04d}"  # what the next release's migration will be called
_names = count(1)


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty database, and the environment that points every command at it."""
    if request.param == "sqlite":
        where = f"sqlite:///{tmp_path / 'db' / 'stronghold.db'}"
    else:
        where = request.getfixturevalue("postgres").create_database(f"state{os.getpid()}_{next(_names)}")
    for name, value in (("DATABASE_URL", where), ("DATA_DIR", tmp_path / "data"),
                        ("MODELS_DIR", tmp_path / "models"), ("CLAMD_SOCKET", "none")):
        monkeypatch.setenv(f"STRONGHOLD_{name}", str(value))
    return where


def _state(url: str) -> tuple[set[str], list[str]]:
    """(the tables, the recorded revisions) of the database."""
    with Store(url) as store, store.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() \
            if "alembic_version" in tables else []
    return tables, list(versions)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("stronghold: error: ")]
    return line


def test_a_newer_schema_stops_every_command_and_the_milter(url: str, capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with Store(url) as store:
        store.upgrade()
        with store.engine.begin() as conn:  # what the next release's migration leaves
            conn.execute(text("CREATE TABLE future_things (id INTEGER PRIMARY KEY)"))
            conn.execute(text("UPDATE alembic_version SET version_num = :newer"), {"newer": NEWER})
    before = _state(url)
    for argv in (["db", "upgrade"], ["db", "downgrade", PREVIOUS], ["quarantine", "ls"], ["jobs"], ["web"]):
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert f"schema is at revision {NEWER}, newer than this Stronghold knows (up to {HEAD})" in line, argv
    assert main(["db", "status"]) == 1
    assert f"at revision {NEWER}, newer than this release ({HEAD})" in capsys.readouterr().out
    with Store(url) as store:
        assert schema_line(store) == 1  # `milter --check-config` counts it as a failure
    assert f"FAIL: database schema at revision {NEWER}, newer than this release knows ({HEAD})" \
        in capsys.readouterr().out
    with caplog.at_level(logging.ERROR):
        assert main(["milter"]) == 2  # refuses to start, rather than serve mail on a schema it does not know
    assert any("not starting" in r.message and f"revision {NEWER}" in r.message for r in caplog.records)
    assert _state(url) == before


def test_tables_without_a_revision_are_not_migrated(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A restore that left out alembic_version: refused by name, not "table users already exists"."""
    with Store(url) as store:
        store.upgrade()
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE alembic_version"))
    before = _state(url)
    assert main(["db", "upgrade"]) == 2
    assert "holds Stronghold tables (addresses, list_entries, messages, meta, users) but records no schema " \
           "revision" in _one_line_error(capsys)
    assert _state(url) == before


def test_an_empty_database_is_created_by_db_upgrade(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "status"]) == 1
    assert f"database has no schema yet (this release: {HEAD}): run 'stronghold db upgrade'" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert f"database at revision {HEAD}" in capsys.readouterr().out
    assert main(["db", "status"]) == 0
    assert f"database at revision {HEAD}, current" in capsys.readouterr().out
    assert main(["db", "downgrade", PREVIOUS]) == 0  # what a rollback to the release before runs
    assert f"database at revision {PREVIOUS}" in capsys.readouterr().out
    assert main(["db", "status"]) == 1
    assert f"at revision {PREVIOUS}, this release needs {HEAD}: run 'stronghold db upgrade'" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0


def _refuse_table(name: str):
    """A connect hook: SQLite refuses to create table ``name`` (a migration failing midway)."""
    def hook(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        def authorize(action: int, arg1: str | None, *_: object) -> int:
            return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_CREATE_TABLE and arg1 == name \
                else sqlite3.SQLITE_OK
        dbapi_conn.set_authorizer(authorize)
    return hook


@pytest.mark.postgres
def test_a_migration_failing_midway_on_postgres_changes_nothing(request: pytest.FixtureRequest) -> None:
    """PostgreSQL's DDL was always transactional: a conflicting table makes 0002 fail after it
    created quarantine_blobs, and nothing of it is left."""
    url = request.getfixturevalue("postgres").create_database(f"state{os.getpid()}_{next(_names)}")
    with Store(url) as store:
        store.upgrade("0001")
        with store.engine.begin() as conn:
            conn.execute(text("CREATE TABLE quarantine_items (id INTEGER PRIMARY KEY)"))
        with pytest.raises(StoreError, match=rf"^schema migration from revision 0001 to {HEAD} failed and was "
                                             r"rolled back: .*DuplicateTable"):
            store.upgrade()
    tables, versions = _state(url)
    assert versions == ["0001"] and "quarantine_blobs" not in tables


def test_a_migration_failing_midway_on_sqlite_changes_nothing(tmp_path: Path) -> None:
    """0002 creates quarantine_blobs, then quarantine_items; the second fails.  Before, the first
    stayed with revision 0001 recorded, and every later upgrade failed on it."""
    url = f"sqlite:///{tmp_path / 'half.db'}"
    with Store(url) as store:
        store.upgrade("0001")
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, login, password_hash, role, disabled, created) "
                              "VALUES (1, 'alice', 'x', 'user', 0, 0)"))
    failing = Store(url)
    event.listen(failing.engine, "connect", _refuse_table("quarantine_items"))
    with pytest.raises(StoreError) as failed:
        failing.upgrade()
    failing.dispose()
    tables, versions = _state(url)
    assert versions == ["0001"] and "quarantine_blobs" not in tables
    assert str(failed.value) == (f"schema migration from revision 0001 to {HEAD} failed and was rolled back: "
                                 "(sqlite3.DatabaseError) not authorized")
    with Store(url) as store:
        assert store.upgrade() == HEAD
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT login FROM users")).scalars().all() == ["alice"]


def test_a_database_left_half_migrated_by_an_older_release_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """What an older release left after 0002 failed midway: its first table, revision 0001."""
    url = f"sqlite:///{tmp_path / 'half.db'}"
    with Store(url) as store:
        store.upgrade("0001")
        with store.engine.begin() as conn:
            conn.execute(text("CREATE TABLE quarantine_blobs (sha256 VARCHAR(64) PRIMARY KEY, size INTEGER, "
                              "data BLOB, touched FLOAT)"))
    before = _state(url)
    monkeypatch.setenv("STRONGHOLD_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 2
    line = _one_line_error(capsys)
    assert f"from revision 0001 to {HEAD} failed and was rolled back" in line
    assert "table quarantine_blobs already exists" in line and "restore the backup taken before it" in line
    assert _state(url) == before
