"""Allow/block list entries in the store, and the cache the milter reads."""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from stronghold.lists import KINDS, ListEntry, ListIndex, PatternError, normalize_pattern
from stronghold.store.db import Store
from stronghold.store.errors import EntryError, StoreError
from stronghold.store.tables import GLOBAL, ListEntryRow, Meta

log = logging.getLogger(__name__)
VERSION_KEY = "lists_version"


def _bump_version(session: Session) -> None:
    row = session.get(Meta, VERSION_KEY)
    if row is None:
        session.add(Meta(key=VERSION_KEY, value=1))
    else:
        session.execute(update(Meta).where(Meta.key == VERSION_KEY).values(value=Meta.value + 1))


def lists_version(session: Session) -> int:
    row = session.get(Meta, VERSION_KEY)
    return row.value if row is not None else 0


def _to_entry(row: ListEntryRow) -> ListEntry:
    return ListEntry(row.id, row.owner or None, row.kind, row.pattern, row.comment,
                     bool(row.trust_unauthenticated))


def add_entry(session: Session, owner: str | None, kind: str, pattern: str,
              comment: str = "", trust_unauthenticated: bool = False) -> ListEntry:
    """Validate and add; duplicates and an entry on both lists are refused with a reason."""
    if kind not in KINDS:
        raise EntryError(f"list kind must be {' or '.join(KINDS)}")
    if trust_unauthenticated and kind != "allow":
        raise EntryError("only allow entries can be trusted without authentication")
    try:
        norm = normalize_pattern(pattern)
    except PatternError as exc:
        raise EntryError(str(exc)) from exc
    comment = " ".join(comment.split())[:200]
    scope = owner or GLOBAL
    rows = session.scalars(select(ListEntryRow).where(ListEntryRow.owner == scope,
                                                      ListEntryRow.pattern == norm)).all()
    for row in rows:
        if row.kind == kind:
            raise EntryError(f"{norm} is already on the {kind} list")
        raise EntryError(f"{norm} is on the {row.kind} list; remove it there first")
    row = ListEntryRow(owner=scope, kind=kind, pattern=norm, comment=comment, created=time.time(),
                       trust_unauthenticated=trust_unauthenticated)
    session.add(row)
    session.flush()
    _bump_version(session)
    return _to_entry(row)


def remove_entry(session: Session, entry_id: int, owners: Iterable[str | None]) -> ListEntry:
    """Remove an entry if it belongs to one of ``owners`` (None: global)."""
    scopes = [o or GLOBAL for o in owners]
    row = session.get(ListEntryRow, entry_id)
    if row is None or row.owner not in scopes:
        raise EntryError("no such entry")
    entry = _to_entry(row)
    session.delete(row)
    _bump_version(session)
    return entry


def set_trust(session: Session, entry_id: int, owners: Iterable[str | None],
              trust_unauthenticated: bool) -> ListEntry:
    """Mark an allow entry of one of ``owners`` as trusted without authentication (or not)."""
    scopes = [o or GLOBAL for o in owners]
    row = session.get(ListEntryRow, entry_id)
    if row is None or row.owner not in scopes:
        raise EntryError("no such entry")
    if row.kind != "allow":
        raise EntryError("only allow entries can be trusted without authentication")
    row.trust_unauthenticated = trust_unauthenticated
    _bump_version(session)
    return _to_entry(row)


def entries(session: Session, owner: str | None, kind: str | None = None,
            search: str = "") -> list[ListEntry]:
    query = select(ListEntryRow).where(ListEntryRow.owner == (owner or GLOBAL))
    if kind:
        query = query.where(ListEntryRow.kind == kind)
    if search:
        like = "%" + search.strip().lower().replace("%", r"\%").replace("_", r"\_") + "%"
        query = query.where(ListEntryRow.pattern.like(like, escape="\\"))
    return [_to_entry(r) for r in session.scalars(query.order_by(ListEntryRow.pattern))]


def all_entries(session: Session) -> list[ListEntry]:
    return [_to_entry(r) for r in session.scalars(select(ListEntryRow))]


CSV_FIELDS = ("kind", "pattern", "comment")


def export_csv(items: Iterable[ListEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for e in items:
        writer.writerow((e.kind, e.pattern, e.comment))
    return out.getvalue()


def import_csv(session: Session, owner: str | None, text: str,
               default_kind: str | None = None) -> tuple[int, list[str]]:
    """Add entries from CSV (kind,pattern,comment; header optional); (added, problems)."""
    added = 0
    problems: list[str] = []
    reader = csv.reader(io.StringIO(text))
    for number, row in enumerate(reader, 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        cells = [c.strip() for c in row]
        if number == 1 and cells[0].lower() == "kind":
            continue
        if default_kind and (len(cells) < 2 or cells[0].lower() not in KINDS):
            kind, pattern, comment = default_kind, cells[0], (cells[1] if len(cells) > 1 else "")
        elif len(cells) >= 2:
            kind, pattern, comment = cells[0].lower(), cells[1], (cells[2] if len(cells) > 2 else "")
        else:
            problems.append(f"line {number}: expected kind,pattern[,comment]")
            continue
        try:
            with session.begin_nested():
                add_entry(session, owner, kind, pattern, comment)
            added += 1
        except EntryError as exc:
            problems.append(f"line {number}: {exc}")
        if len(problems) > 200:
            problems.append("too many problems; stopped")
            break
    return added, problems


class ListCache:
    """The lists as the milter sees them: reloaded when the version changes.

    The version is read at most every ``refresh`` seconds, so an edit reaches a
    running milter within that time.  A failure raises StoreError (the engine
    applies on_store_error); the next call tries again.
    """

    def __init__(self, store: Store, refresh: float = 2.0) -> None:
        self.store = store
        self.refresh = refresh
        self._lock = threading.Lock()
        self._index: ListIndex | None = None
        self._version = -1
        self._checked = 0.0

    def cached(self) -> ListIndex | None:
        """The index if it is fresh enough to use without asking the database."""
        with self._lock:
            if self._index is not None and time.monotonic() - self._checked < self.refresh:
                return self._index
            return None

    def __call__(self) -> ListIndex:
        now = time.monotonic()
        with self._lock:
            if self._index is not None and now - self._checked < self.refresh:
                return self._index
            with self.store.session() as session:
                version = lists_version(session)
                if version != self._version or self._index is None:
                    self._index = ListIndex(all_entries(session))
                    self._version = version
                    log.info("lists loaded: %d entries (version %d)", len(self._index), version)
            self._checked = now
            return self._index

    def invalidate(self) -> None:
        with self._lock:
            self._checked = 0.0


__all__ = ["EntryError", "ListCache", "StoreError", "add_entry", "all_entries", "entries",
           "export_csv", "import_csv", "lists_version", "remove_entry", "set_trust"]
