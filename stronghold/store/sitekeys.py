"""Keys every node shares, in the ``site_keys`` table: the first node that needs one stores it,
every other node (and every later start) reads that one."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from stronghold.store.tables import SiteKey

WEB = "web"  # the web UI's secret key: its cookies and CSRF tokens, and the digest's release links
_TABLE = cast(Table, SiteKey.__table__)


def shared(session: Session, name: str, candidate: str) -> str:
    """The key ``name``; stored as ``candidate`` when there is none yet.  Nodes asking at once all
    get the one that was stored first (the insert does nothing when the row exists)."""
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(_TABLE)
    elif dialect == "sqlite":
        stmt = sqlite.insert(_TABLE)
    else:  # pragma: no cover - only the two databases above are supported
        raise NotImplementedError(f"site keys on {dialect}")
    session.execute(stmt.values(name=name, value=candidate, created=time.time())
                    .on_conflict_do_nothing(index_elements=["name"]))
    return str(session.scalar(select(SiteKey.value).where(SiteKey.name == name)))
