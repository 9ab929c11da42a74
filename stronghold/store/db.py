"""Engine, sessions and migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from stronghold.store.errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# PostgreSQL advisory lock key held while migrating, so nodes upgrading at once take turns.
UPGRADE_LOCK_KEY = 0x5354524F  # "STRO"
# First key of the two-key advisory locks ``take_turns`` holds (a key space apart from the one above).
TURNS_LOCK_KEY = 0x5354


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
    # SQLite's own lower() folds only A-Z, so the searches' lower(subject) LIKE lower(needle) found
    # nothing for "Привет" or "ÉTÉ" typed exactly as shown; Python's folds every script.
    dbapi_conn.create_function("lower", 1, _unicode_lower, deterministic=True)


def _unicode_lower(value: object) -> object:
    """SQL lower() as Python's str.lower (NULL, numbers and blobs as they are)."""
    return value.lower() if isinstance(value, str) else value


def take_turns(session: Session, name: str) -> None:
    """Until ``session``'s transaction ends, hold PostgreSQL's advisory lock for ``name``, so that nodes
    running the same check-then-write on one database take turns: the later one waits, then reads
    what the first committed (each statement of a READ COMMITTED transaction sees the latest
    commits).  Nothing on SQLite, which lets one writer at a time in and has one node."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:name))"),
                        {"space": TURNS_LOCK_KEY, "name": name})


class Store:
    """A database: SQLite file or PostgreSQL URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, object] = {"future": True, "pool_pre_ping": not url.startswith("sqlite")}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 5, "check_same_thread": False}
        else:
            kwargs["pool_size"] = 5
            kwargs["connect_args"] = {"connect_timeout": 5}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"database URL unusable: {exc}") from exc
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error.

        Database failures come out as StoreError with a one-line message (StoreUnavailable when the
        database did not answer).
        """
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            kind = StoreUnavailable if isinstance(exc, OperationalError | InterfaceError) else StoreError
            raise kind(f"database error: {str(exc).splitlines()[0][:200]}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def upgrade(self, revision: str = "head") -> str:
        """Bring the schema to the newest migration (or to ``revision``); returns the revision.

        All of it in one transaction, on SQLite too (stronghold.store.schema): a migration that
        fails leaves the database as it was.  A schema this release does not know (newer, or
        tables without a revision) raises SchemaError before anything changes.  On PostgreSQL
        a transaction-scoped advisory lock serialises nodes upgrading at once (several milters,
        web UIs or cron jobs starting together): the second waits, then finds the schema
        current instead of failing on tables the first is creating; on SQLite ``BEGIN
        IMMEDIATE`` does the same.
        """
        return self._migrate("upgrade", revision)

    def downgrade(self, revision: str) -> str:
        """Take the schema back to ``revision`` (dropping what later ones added), as ``upgrade``
        does: in one transaction, refused on a schema this release does not know."""
        return self._migrate("downgrade", revision)

    def _migrate(self, direction: str, revision: str) -> str:
        from alembic import command
        from alembic.util import CommandError

        from stronghold.store import schema  # alembic: only where the schema is touched
        cfg = schema.alembic_config()
        try:
            if direction == "upgrade" and revision in ("head", schema.head()):
                with self.engine.connect() as conn:  # the usual case: current, no lock taken
                    if schema.check(conn) == schema.head():
                        return schema.head()
            with self.engine.connect() as conn:
                sqlite = conn.dialect.name == "sqlite"
                with schema.sqlite_transaction(conn) if sqlite else conn.begin():
                    if conn.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
                    start = schema.check(conn)
                    cfg.attributes["connection"] = conn
                    try:
                        getattr(command, direction)(cfg, revision)
                    except (SQLAlchemyError, CommandError) as exc:
                        raise schema.failed(conn, start, revision, exc) from exc
            with self.engine.connect() as conn:
                return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar() or "base")
        except SQLAlchemyError as exc:  # most often the database is down or not a database at all
            raise StoreError(f"database unusable (checking its schema): {str(exc).splitlines()[0][:200]}") from exc

    def revision(self) -> tuple[str | None, str]:
        """(the revision the database records, None if none; the newest this release knows)."""
        from stronghold.store import schema
        try:
            with self.engine.connect() as conn:
                return schema.current(conn), schema.head()
        except SQLAlchemyError as exc:
            raise StoreError(f"database unusable (checking its schema): {str(exc).splitlines()[0][:200]}") from exc

    def ping(self) -> None:
        """Run a trivial query; StoreError if the database does not answer."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(f"database unreachable: {str(exc).splitlines()[0][:200]}") from exc

    def dispose(self) -> None:
        """Close the pooled connections (a new one opens on next use)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()
