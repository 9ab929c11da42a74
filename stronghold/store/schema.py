"""The schema's revisions: which this release knows, where a database stands, and migrating it
in one transaction on SQLite too.

Refused before anything changes (SchemaError, one line): a database at a revision this release
does not know (a newer release migrated it: a downgraded package, or an old node of a rolling
upgrade), and a database holding Stronghold's tables without a revision.  SQLite runs DDL
inside a transaction, but Python's driver opens none before it, so a migration that failed
midway used to leave its first tables behind with the old revision recorded; here the driver
opens none and one ``BEGIN IMMEDIATE`` covers the whole upgrade (and keeps a second process
out until it is done), with foreign keys off for its duration, as SQLite asks for table
rebuilds (a batch migration's DROP TABLE would otherwise cascade into the rows that refer to
it), and checked before the commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from stronghold.store.db import MIGRATIONS
from stronghold.store.errors import SchemaError

_OURS = frozenset({"users", "addresses", "list_entries", "messages", "meta"})  # 0001's tables
_ALREADY = ("already exists", "duplicate column")


def alembic_config() -> AlembicConfig:
    """Alembic's settings for this release's migrations (the connection is added per run)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@lru_cache(maxsize=1)
def revisions() -> tuple[str, ...]:
    """Every revision this release knows, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return tuple(s.revision for s in reversed(list(script.walk_revisions())))


def head() -> str:
    """The newest revision this release knows."""
    return revisions()[-1]


def current(conn: Connection) -> str | None:
    """The revision the database records (None: no alembic_version row)."""
    return MigrationContext.configure(conn).get_current_revision()


def check(conn: Connection) -> str | None:
    """The database's revision, if this release can use or migrate it; else SchemaError."""
    found = current(conn)
    if found is None:
        ours = sorted(_OURS & set(inspect(conn).get_table_names()))
        if ours:
            raise SchemaError(f"the database holds Stronghold tables ({', '.join(ours)}) but records no "
                              "schema revision (alembic_version): restored without it or made by other "
                              "means; not migrating it (restore a complete backup)")
        return None
    if found not in revisions():
        raise SchemaError(f"the database schema is at revision {found}, newer than this Stronghold knows "
                          f"(up to {head()}): a newer release upgraded it; run that release on this node "
                          "(every node of a shared database needs it), or restore the backup taken before "
                          "that upgrade")
    return found


def failed(conn: Connection, start: str | None, target: str, exc: Exception) -> SchemaError:
    """The one-line error of a migration that failed (and was rolled back)."""
    target = head() if target == "head" else target
    first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    hint = ""
    if conn.dialect.name == "sqlite" and any(word in first for word in _ALREADY):
        hint = ("; the database already has part of a later revision (an upgrade by an older release "
                "stopped part-way on SQLite): restore the backup taken before it")
    return SchemaError(f"schema migration from revision {start or '(empty database)'} to {target} failed "
                       f"and was rolled back: {first}{hint}")


@contextmanager
def sqlite_transaction(conn: Connection) -> Iterator[None]:
    """One real transaction around everything ``conn`` runs, DDL included, with foreign keys off
    (and checked before the commit).  The connection is put back as it was, or discarded."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    old_level = raw.isolation_level
    raw.isolation_level = None  # the driver opens no transaction of its own
    try:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # only outside a transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise SchemaError(f"the migrated schema breaks {len(broken)} foreign key(s) "
                                  f"(first in table {broken[0][0]}); rolled back")
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        finally:
            conn.commit()  # end SQLAlchemy's own (empty) transaction
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        raw.isolation_level = old_level
    except BaseException:
        conn.invalidate()  # never hand a connection in another state back to the pool
        raise
