"""Allow/block list entries in the store, and the cache the milter reads."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from stronghold.lists import KINDS, ListEntry, ListIndex, PatternError, display, normalize_pattern, shorten
from stronghold.store.db import Store, take_turns
from stronghold.store.errors import EntryError, StoreError
from stronghold.store.recheck import Recheck
from stronghold.store.tables import GLOBAL, Address, ListEntryRow, Meta, User

log = logging.getLogger(__name__)
VERSION_KEY = "lists_version"
MAX_COMMENT = 200  # the column's width
# Entries one address may have (both lists): every milter worker holds every entry, and reads
# them all again at each change, so one user's lists must not grow without end. The admins'
# global lists are not bounded.
MAX_OWNER_ENTRIES = 10_000


class DuplicateError(EntryError):
    """The pattern is already on that very list."""


class ConflictError(EntryError):
    """The pattern is already on the other list of the same owner."""

    def __init__(self, pattern: str, kind: str) -> None:
        super().__init__(f"{display(pattern)} is on the {kind} list; remove it there first")
        self.pattern, self.kind = pattern, kind


def bump_version(session: Session) -> None:
    """Count a list change, so every node's ListCache reloads the lists."""
    take_turns(session, VERSION_KEY)  # two nodes' very first changes must not both insert the row
    row = session.get(Meta, VERSION_KEY)
    if row is None:
        session.add(Meta(key=VERSION_KEY, value=1))
    else:
        session.execute(update(Meta).where(Meta.key == VERSION_KEY).values(value=Meta.value + 1))


def lists_version(session: Session) -> int:
    """The lists' change counter (0 before the first change)."""
    row = session.get(Meta, VERSION_KEY)
    return row.value if row is not None else 0


def _to_entry(row: ListEntryRow) -> ListEntry:
    return ListEntry(row.id, row.owner or None, row.kind, row.pattern, row.comment,
                     bool(row.trust_unauthenticated))


def _checked(kind: str, pattern: str, comment: str) -> tuple[str, str]:
    """(normalized pattern, tidied comment), or EntryError saying what is wrong."""
    if kind not in KINDS:
        raise EntryError(f"the list kind '{shorten(kind)}' is not {' or '.join(KINDS)}")
    try:
        norm = normalize_pattern(pattern)
    except PatternError as exc:
        raise EntryError(str(exc)) from exc
    comment = " ".join(comment.split())
    if len(comment) > MAX_COMMENT:
        raise EntryError(f"the comment has {len(comment)} characters; at most {MAX_COMMENT} fit")
    return norm, comment


def _check_room(scope: str, held: int, adding: int) -> None:
    """EntryError if ``scope``'s lists, holding ``held`` entries, cannot take ``adding`` more."""
    if scope != GLOBAL and held + adding > MAX_OWNER_ENTRIES:
        raise EntryError(f"the lists of {display(scope)} hold {held:,} entries and one address may have "
                         f"at most {MAX_OWNER_ENTRIES:,}: remove some first"
                         + (f" (this adds {adding:,})" if adding > 1 else ""))


def _refuse_clash(pattern: str, kind: str, listed_kind: str) -> None:
    if listed_kind == kind:
        raise DuplicateError(f"{display(pattern)} is already on the {kind} list")
    raise ConflictError(pattern, listed_kind)


def add_entry(session: Session, owner: str | None, kind: str, pattern: str,
              comment: str = "", trust_unauthenticated: bool = False) -> ListEntry:
    """Validate and add; duplicates and an entry on both lists are refused with a reason."""
    norm, comment = _checked(kind, pattern, comment)
    if trust_unauthenticated and kind != "allow":
        raise EntryError("only allow entries can be trusted without authentication")
    scope = owner or GLOBAL
    take_turns(session, f"lists:{scope}")  # nodes adding to one owner's lists at once: see import_csv
    rows = session.scalars(select(ListEntryRow).where(ListEntryRow.owner == scope,
                                                      ListEntryRow.pattern == norm)).all()
    for row in rows:
        _refuse_clash(norm, kind, row.kind)
    if scope != GLOBAL:
        _check_room(scope, session.scalar(select(func.count()).select_from(ListEntryRow)
                                          .where(ListEntryRow.owner == scope)) or 0, 1)
    row = ListEntryRow(owner=scope, kind=kind, pattern=norm, comment=comment, created=time.time(),
                       trust_unauthenticated=trust_unauthenticated)
    session.add(row)
    session.flush()
    bump_version(session)
    return _to_entry(row)


def remove_entry(session: Session, entry_id: int, owners: Iterable[str | None]) -> ListEntry:
    """Remove an entry if it belongs to one of ``owners`` (None: global)."""
    scopes = [o or GLOBAL for o in owners]
    row = session.get(ListEntryRow, entry_id)
    if row is None or row.owner not in scopes:
        raise EntryError("no such entry")
    entry = _to_entry(row)
    session.delete(row)
    bump_version(session)
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
    bump_version(session)
    return _to_entry(row)


def entries(session: Session, owner: str | None, kind: str | None = None,
            search: str = "") -> list[ListEntry]:
    """One owner's entries; ``search`` finds text in the stored (A-label) or shown (U-label) form."""
    query = select(ListEntryRow).where(ListEntryRow.owner == (owner or GLOBAL))
    if kind:
        query = query.where(ListEntryRow.kind == kind)
    found = [_to_entry(r) for r in session.scalars(query.order_by(ListEntryRow.pattern))]
    term = search.strip().lower()
    if term:
        found = [e for e in found if term in e.pattern or term in display(e.pattern).lower()]
    return found


def drop_owner(session: Session, owner: str) -> int:
    """Delete every entry of an address's lists (its owner is gone); returns how many."""
    count = len(session.scalars(select(ListEntryRow.id).where(ListEntryRow.owner == owner)).all())
    if count:
        session.execute(delete(ListEntryRow).where(ListEntryRow.owner == owner))
        bump_version(session)
    return count


def all_entries(session: Session) -> list[ListEntry]:
    """Every list entry, global and users', in no particular order."""
    return [_to_entry(r) for r in session.scalars(select(ListEntryRow))]


def sizes(session: Session) -> dict[tuple[str, str], int]:
    """Entries per (kind, scope), scope "global" or "user"."""
    counts: dict[tuple[str, str], int] = {}
    for scope, where in (("global", ListEntryRow.owner == GLOBAL), ("user", ListEntryRow.owner != GLOBAL)):
        for kind, n in session.execute(select(ListEntryRow.kind, func.count()).where(where)
                                       .group_by(ListEntryRow.kind)):
            counts[(str(kind), scope)] = int(n)
    return counts


CSV_FIELDS = ("kind", "pattern", "comment", "trust_unauthenticated")
TRUST_WORDS = {"": False, "no": False, "yes": True}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads such a cell as a formula


def csv_cell(value: str) -> str:
    """``value`` for a CSV cell a spreadsheet shows as text: a quote before a formula start.

    A value whose leading quotes already precede one gets another, so ``csv_value`` gives it back whole."""
    return "'" + value if value.lstrip("'").startswith(FORMULA_STARTS) else value


def csv_value(cell: str) -> str:
    """The value ``csv_cell`` wrote: the quote it added (only ever before a formula start) taken off."""
    return cell[1:] if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS) else cell


def export_csv(items: Iterable[ListEntry]) -> str:
    """kind,pattern,comment,trust_unauthenticated ("yes" on allow entries trusted without
    authentication, empty otherwise): what ``import_csv`` reads back to the same entries.

    A cell starting like a formula (``@example.com``, ``=HYPERLINK(...)`` in a comment) gets a
    leading quote, so a spreadsheet opening the file shows it and runs nothing."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for e in items:
        writer.writerow((e.kind, csv_cell(e.pattern), csv_cell(e.comment), "yes" if e.trust_unauthenticated else ""))
    return out.getvalue()


@dataclass
class ImportReport:
    """What an import did: all lines added, or (if any line is refused) none."""

    added: int = 0
    trusted: int = 0  # of those added, allow entries trusted without authentication
    skipped: list[str] = field(default_factory=list)  # already on that list: nothing to do
    problems: list[str] = field(default_factory=list)  # refused lines; when any, nothing was added
    lines: int = 0


def import_csv(session: Session, owner: str | None, text: str, default_kind: str | None = None,
               refuse: Callable[[str, str], str | None] | None = None) -> ImportReport:
    """Add entries from CSV (kind,pattern[,comment[,trust_unauthenticated]]; header optional),
    all or nothing.  The fourth field, "yes" or "no" (or empty), marks an allow entry as trusted
    without authentication, as ``export_csv`` writes it; the quote ``export_csv`` puts before
    a cell starting like a formula is taken off again.

    Every line is checked and every problem reported; if there is one, no line is
    added, so a fixed file can simply be imported again.  Lines already on the
    same list (or earlier in the file) are skipped and reported.  The new entries
    go in with one statement: a 30,000-line file takes seconds, not minutes.
    ``refuse(kind, normalized pattern)``: a reason to refuse a line that is valid (None: none).
    EntryError, nothing added, when the owner's lists would pass ``MAX_OWNER_ENTRIES``.
    """
    report = ImportReport()
    scope = owner or GLOBAL
    # Two web nodes (or tabs, or the CLI) adding to one owner's lists at once take turns, so the
    # second checks the cap and the clashes against what the first added: otherwise two imports of
    # 6,000 each both found room for 10,000, and a pattern could go on both lists.
    take_turns(session, f"lists:{scope}")
    listed = {pattern: kind for pattern, kind in session.execute(
        select(ListEntryRow.pattern, ListEntryRow.kind).where(ListEntryRow.owner == scope))}
    new: dict[str, tuple[str, str, bool]] = {}
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.problems.append(f"line {reader.line_num}: unreadable CSV ({exc}); "
                                   "the rest of the file was not read")
            break
        report.lines += 1
        parsed = _parse_row(row, reader.line_num, default_kind, report)
        if parsed is None:
            continue
        kind, pattern, comment, trust = parsed
        try:
            norm, comment = _checked(kind, pattern, comment)
            if norm in listed:
                _refuse_clash(norm, kind, listed[norm])
            if norm in new:
                _refuse_clash(norm, kind, new[norm][0])
            reason = refuse(kind, norm) if refuse is not None else None
            if reason:
                raise EntryError(reason)
        except DuplicateError as exc:
            report.skipped.append(f"line {reader.line_num}: {exc}")
            continue
        except EntryError as exc:
            report.problems.append(f"line {reader.line_num}: {exc}")
            continue
        new[norm] = (kind, comment, trust)
    if report.problems or not new:
        return report
    _check_room(scope, len(listed), len(new))
    now = time.time()
    session.execute(insert(ListEntryRow), [{"owner": scope, "kind": kind, "pattern": pattern,
                                            "comment": comment, "created": now,
                                            "trust_unauthenticated": trust}
                                           for pattern, (kind, comment, trust) in new.items()])
    bump_version(session)
    report.added = len(new)
    report.trusted = sum(1 for _, _, trust in new.values() if trust)
    return report


def _parse_row(row: list[str], number: int, default_kind: str | None,
               report: ImportReport) -> tuple[str, str, str, bool] | None:
    """(kind, pattern, comment, trusted) of a CSV row; None for blank lines, the header and problems."""
    if not row or not any(cell.strip() for cell in row):
        return None
    cells = [csv_value(c.strip()) for c in row]
    if report.lines == 1 and cells[0].lower() == "kind":
        return None
    if len(cells) > 4:
        report.problems.append(f"line {number}: {len(cells)} fields; "
                               "expected kind,pattern[,comment[,trust_unauthenticated]]")
        return None
    if default_kind and (len(cells) < 2 or cells[0].lower() not in KINDS):
        if len(cells) > 2:
            report.problems.append(f"line {number}: '{shorten(cells[0])}' is not allow or block")
            return None
        return default_kind, cells[0], (cells[1] if len(cells) > 1 else ""), False
    if len(cells) >= 2:
        kind = cells[0].lower()
        word = cells[3].lower() if len(cells) > 3 else ""
        if word not in TRUST_WORDS:
            report.problems.append(f"line {number}: trust_unauthenticated is '{shorten(cells[3])}'; "
                                   "expected yes, no or nothing")
            return None
        if TRUST_WORDS[word] and kind != "allow":
            report.problems.append(f"line {number}: only allow entries can be trusted without authentication")
            return None
        return kind, cells[1], (cells[2] if len(cells) > 2 else ""), TRUST_WORDS[word]
    report.problems.append(f"line {number}: expected kind,pattern[,comment]")
    return None


def address_thresholds(session: Session, bounds: tuple[float, float]) -> dict[str, float]:
    """{address: its owner's own spam threshold} for enabled users who chose one, clamped to
    ``bounds`` (an admin who narrows them later need not edit every user)."""
    low, high = bounds
    rows = session.execute(select(Address.address, User.spam_threshold).join(User, Address.user_id == User.id)
                           .where(User.spam_threshold.is_not(None), User.disabled.is_(False))).all()
    return {address: min(max(float(value), low), high) for address, value in rows if value is not None}


class ListCache:
    """The lists as the milter sees them: reloaded when the version changes.

    The version is read at most every ``refresh`` seconds, so an edit reaches a
    running milter within that time; with ``early`` (the store thread's ``submit``)
    it is read there ahead of time and mail need not wait (``Recheck``).  A failure
    raises StoreError (the engine applies on_store_error); the next call tries again.
    """

    def __init__(self, store: Store, refresh: float = 2.0,
                 threshold_bounds: tuple[float, float] | None = None,
                 early: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.store = store
        self.threshold_bounds = threshold_bounds  # None: users' own thresholds are not used
        self._index: ListIndex | None = None
        self._version = -1
        self._recheck = Recheck(refresh, self._check, early)

    def cached(self) -> ListIndex | None:
        """The index if it is fresh enough to use without asking the database."""
        index = self._index
        return index if index is not None and self._recheck.fresh() else None

    def __call__(self) -> ListIndex:
        index = self._index
        if index is not None and self._recheck.fresh():
            return index
        return self._check()

    def _check(self) -> ListIndex:
        """Read the version (and the lists, when it changed) now."""
        with self._recheck.checking():
            index = self._index
            with self.store.session() as session:
                version = lists_version(session)
                if version != self._version or index is None:
                    thresholds = (address_thresholds(session, self.threshold_bounds)
                                  if self.threshold_bounds is not None else None)
                    index = ListIndex(all_entries(session), thresholds)
                    self._index, self._version = index, version
                    log.info("lists loaded: %d entries (version %d)", len(index), version)
        return index

    def invalidate(self) -> None:
        """Check the lists' version on the next call instead of waiting out ``refresh``."""
        self._recheck.expire()


__all__ = ["ConflictError", "DuplicateError", "EntryError", "ImportReport", "ListCache", "StoreError",
           "add_entry", "all_entries", "drop_owner", "entries", "export_csv", "import_csv", "lists_version",
           "remove_entry",
           "set_trust"]
