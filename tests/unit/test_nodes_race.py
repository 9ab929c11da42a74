"""Two nodes doing the same check-then-write on one PostgreSQL at once (list edits and imports,
model publishing): the second waits for the first and answers from what it committed.

Each "node" is a Store of its own (its own connection pool, as another host has).  ``one_after_other``
holds the first node's transaction open until the second has either finished or is waiting for a
lock (read from ``pg_stat_activity``), so the race is played the same way every run, no sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from devtools.localstack import wait_for
from stronghold.store import entries, modelversions
from stronghold.store.db import Store
from stronghold.store.entries import MAX_OWNER_ENTRIES, ConflictError, DuplicateError
from stronghold.store.errors import EntryError
from stronghold.store.tables import ListEntryRow, ModelVersion

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("store", ["postgres"], indirect=True)]
Work = Callable[[Session], object]


@pytest.fixture
def fresh_nodes(store: Store) -> Iterator[tuple[Store, Store]]:
    """Two nodes' stores on the test's database, as migrated."""
    pair = (Store(store.url), Store(store.url))
    yield pair
    for node in pair:
        node.dispose()


@pytest.fixture
def nodes(fresh_nodes: tuple[Store, Store]) -> tuple[Store, Store]:
    """The same, after a first list change (``test_the_first_list_changes_...`` races on that one)."""
    with fresh_nodes[0].session() as s:
        entries.bump_version(s)
    return fresh_nodes


def _waiting_for_a_lock(store: Store) -> bool:
    with store.engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND wait_event_type = 'Lock'")).scalar())


def one_after_other(nodes: tuple[Store, Store], first: Work, second: Work) -> list[object]:
    """What ``first`` (on node 1) and ``second`` (on node 2) returned or raised, the second started
    while the first's transaction is still open."""
    outcome: list[object] = [None, None]
    done = threading.Event()

    def run_second() -> None:
        try:
            with nodes[1].session() as s:
                outcome[1] = second(s)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome[1] = exc
        finally:
            done.set()

    with nodes[0].session() as s:
        outcome[0] = first(s)
        thread = threading.Thread(target=run_second)
        thread.start()
        wait_for(lambda: done.is_set() or _waiting_for_a_lock(nodes[0]), 30, "the second node")
    thread.join(30)
    assert not thread.is_alive()
    return outcome


def _csv(prefix: str, count: int) -> str:
    return "\n".join(f"block,{prefix}{i}@spam.example" for i in range(count))


def _owned(store: Store, owner: str) -> list[tuple[str, str]]:
    with store.session() as s:
        return sorted((row.kind, row.pattern) for row in
                      s.scalars(select(ListEntryRow).where(ListEntryRow.owner == owner)))


def test_two_imports_at_once_stay_within_the_cap(nodes: tuple[Store, Store]) -> None:
    """Two imports of 6,000 entries each for one address on two nodes: the second is refused as a
    lone import past the cap would be (before: both found room, 12,000 entries)."""
    half = MAX_OWNER_ENTRIES * 6 // 10
    owner = "alice@example.com"
    first, second = one_after_other(
        nodes, lambda s: entries.import_csv(s, owner, _csv("a", half)).added,
        lambda s: entries.import_csv(s, owner, _csv("b", half)).added)
    assert first == half
    assert isinstance(second, EntryError) and f"at most {MAX_OWNER_ENTRIES:,}" in str(second), second
    with nodes[0].session() as s:
        assert s.scalar(select(func.count()).select_from(ListEntryRow).where(ListEntryRow.owner == owner)) == half


def test_one_pattern_on_both_lists_from_two_nodes_is_refused(nodes: tuple[Store, Store]) -> None:
    """Allowed on one node while blocked on another: the second is told it is on the other list."""
    owner = "bob@example.com"
    _, second = one_after_other(
        nodes, lambda s: entries.add_entry(s, owner, "allow", "news@shop.example"),
        lambda s: entries.add_entry(s, owner, "block", "news@shop.example"))
    assert isinstance(second, ConflictError), second
    assert _owned(nodes[0], owner) == [("allow", "news@shop.example")]


def test_the_same_entry_added_on_two_nodes_is_a_duplicate_not_a_database_error(
        nodes: tuple[Store, Store]) -> None:
    """Two tabs (or nodes) adding one entry: the second is told it is already there (before: a
    unique violation, the web UI's error page)."""
    owner = "carol@example.com"
    _, second = one_after_other(
        nodes, lambda s: entries.add_entry(s, owner, "block", "x@spam.example"),
        lambda s: entries.import_csv(s, owner, "block,x@spam.example\nblock,y@spam.example").added)
    assert second == 1  # the line already listed is skipped, as in a lone import
    _, second = one_after_other(
        nodes, lambda s: entries.add_entry(s, owner, "block", "z@spam.example"),
        lambda s: entries.add_entry(s, owner, "block", "z@spam.example"))
    assert isinstance(second, DuplicateError), second
    assert _owned(nodes[0], owner) == [("block", p) for p in ("x@spam.example", "y@spam.example", "z@spam.example")]


def _active(store: Store) -> list[str]:
    with store.session() as s:
        return list(s.scalars(select(ModelVersion.version).where(ModelVersion.active.is_(True))))


def test_two_nodes_publishing_at_once_leave_one_active_version(nodes: tuple[Store, Store]) -> None:
    """Each publish deactivates the others: two at once left both active (nodes then pulled
    whichever the database listed first), and one version published twice was a unique violation."""
    first, second = one_after_other(
        nodes, lambda s: modelversions.publish(s, "a" * 64, "{}", b"table a"),
        lambda s: modelversions.publish(s, "b" * 64, "{}", b"table b"))
    assert first is None and second is None, (first, second)
    assert _active(nodes[0]) == ["b" * 64]
    first, second = one_after_other(
        nodes, lambda s: modelversions.publish(s, "c" * 64, "{}", b"table c"),
        lambda s: modelversions.publish(s, "c" * 64, "{}", b"table c"))
    assert first is None and second is None, (first, second)
    assert _active(nodes[1]) == ["c" * 64]


def test_the_first_list_changes_on_two_nodes_both_count(fresh_nodes: tuple[Store, Store]) -> None:
    """The lists' change counter is created by the first change ever: two nodes making theirs at once
    both insert it, and one failed on the unique key (the web UI's error page)."""
    _, second = one_after_other(
        fresh_nodes, lambda s: entries.add_entry(s, "alice@example.com", "block", "a@spam.example"),
        lambda s: entries.add_entry(s, "bob@example.com", "block", "b@spam.example"))
    assert not isinstance(second, Exception), second
    with fresh_nodes[0].session() as s:
        assert entries.lists_version(s) == 2
