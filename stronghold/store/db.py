"""Engine, sessions and migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from stronghold.store.errors import StoreError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# PostgreSQL advisory lock key held while migrating, so nodes upgrading at once take turns.
UPGRADE_LOCK_KEY = 0x5354524F  # "STRO"


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

        Database failures come out as StoreError with a one-line message.
        """
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"database error: {str(exc).splitlines()[0][:200]}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def upgrade(self, revision: str = "head") -> str:
        """Bring the schema to the newest migration (or to ``revision``); returns the revision.

        On PostgreSQL a transaction-scoped advisory lock serialises nodes upgrading at once
        (several milters, web UIs or cron jobs starting together): the second waits, then finds
        the schema current instead of failing on tables the first is creating.
        """
        from alembic import command
        from alembic.config import Config as AlembicConfig
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            with self.engine.connect() as conn:
                return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())
        except SQLAlchemyError as exc:  # most often the database is down or not a database at all
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
