"""Cached store data checked ahead of time: mail does not wait for the check, a dead database is still noticed."""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stronghold.personal import LayerCache
from stronghold.service import Service
from stronghold.store import entries
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.store.recheck import Recheck
from stronghold.store.writebehind import StoreThread


@pytest.fixture(autouse=True)
def _no_collector_pauses() -> Iterator[None]:
    """These tests time Recheck's schedule to a few tenths of a second; a full garbage collection
    of the whole suite's heap stops every thread for as long (0.2-0.5 s measured in the unit suite)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Handed:
    """Keeps what ``Recheck`` hands over, to run when the test says."""

    def __init__(self) -> None:
        self.functions: list[Callable[[], None]] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        self.functions.append(fn)


def _checked(recheck: Recheck) -> None:
    """One check of the store that succeeds."""
    with recheck.checking():
        pass


def test_fresh_only_after_a_check_and_for_its_time() -> None:
    recheck = Recheck(0.3, lambda: None)
    assert not recheck.fresh()
    _checked(recheck)
    assert recheck.fresh()
    time.sleep(0.31)
    assert not recheck.fresh()
    _checked(recheck)
    recheck.expire()
    assert not recheck.fresh()


def test_one_early_check_past_half_the_time_and_none_before() -> None:
    handed = Handed()
    recheck = Recheck(1.0, lambda: None, early=handed)
    _checked(recheck)
    assert recheck.fresh() and handed.functions == []  # young: nothing handed over
    time.sleep(0.7)
    assert recheck.fresh() and recheck.fresh() and len(handed.functions) == 1  # one, however many messages


def test_an_early_check_that_succeeds_keeps_the_value_fresh() -> None:
    handed = Handed()
    recheck: Recheck

    def check() -> None:
        _checked(recheck)

    recheck = Recheck(0.6, check, early=handed)
    _checked(recheck)
    for _ in range(4):  # 1.4 s: over twice the time, the value never stale
        time.sleep(0.35)
        assert recheck.fresh()
        while handed.functions:
            handed.functions.pop()()
    assert handed.functions == []


@pytest.mark.parametrize(("failure", "logged"), [
    (StoreError("database error: gone"), "early check of the cached store data failed: database error: gone"),
    (ValueError("a bug"), "ValueError: a bug"),  # nobody waits for the store thread: said in the log
])
def test_an_early_check_that_fails_leaves_the_next_check_to_mail(
        failure: Exception, logged: str, caplog: pytest.LogCaptureFixture) -> None:
    handed = Handed()

    def check() -> None:
        raise failure

    recheck = Recheck(0.8, check, early=handed)
    _checked(recheck)
    time.sleep(0.45)
    assert recheck.fresh()
    with caplog.at_level(logging.INFO, logger="stronghold.store.recheck"):
        handed.functions.pop()()
    assert logged in caplog.text
    assert recheck.fresh() and handed.functions == []  # not handed over again at every message
    time.sleep(0.4)
    assert not recheck.fresh()  # the refresh time is out: mail asks, and fails, as without early checks


def test_a_check_under_way_when_expired_does_not_count() -> None:
    recheck = Recheck(5.0, lambda: None)
    with recheck.checking():  # a check starts, reads the old data ...
        recheck.expire()  # ... an edit says: check again
    assert not recheck.fresh()  # ... the check that read the old data has ended
    _checked(recheck)
    assert recheck.fresh()


def test_a_store_thread_shutting_down_leaves_the_check_to_mail() -> None:
    def refuse(_fn: Callable[[], None]) -> None:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    recheck = Recheck(0.6, lambda: None, early=refuse)
    _checked(recheck)
    time.sleep(0.35)
    assert recheck.fresh()  # the cached data still serves; no exception reaches the mail thread


def _unreachable(store: Store, tmp_path: Path) -> None:
    """The SQLite file replaced by a folder: every new connection fails."""
    store.engine.dispose()
    path = Path(store.engine.url.database or "")
    shutil.move(path, tmp_path / "moved.db")
    path.mkdir()


def test_list_cache_checked_on_the_store_thread_ahead_of_time(store: Store) -> None:
    thread = StoreThread()
    cache = entries.ListCache(store, refresh=1.0, early=thread.submit)
    assert len(thread.call(cache)) == 0
    with store.session() as s:
        entries.add_entry(s, None, "block", "@new.example")
    deadline = time.monotonic() + 2.5  # two and a half refresh times
    seen = 0
    while time.monotonic() < deadline:
        index = cache.cached()
        assert index is not None, "mail would have waited for the database"
        seen = len(index)
        time.sleep(0.02)
    assert seen == 1  # the edit arrived without mail asking the store


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # made unreachable by moving its file
def test_list_cache_notices_a_dead_database_within_its_refresh(store: Store, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    thread = StoreThread()
    cache = entries.ListCache(store, refresh=1.0, early=thread.submit)
    thread.call(cache)
    _unreachable(store, tmp_path)
    time.sleep(0.6)
    with caplog.at_level(logging.INFO, logger="stronghold.store.recheck"):
        assert cache.cached() is not None  # the early check is handed over, fails on the store thread
        thread.call(lambda: None)  # it has run
    assert "early check of the cached store data failed: database error" in caplog.text
    time.sleep(0.45)
    assert cache.cached() is None
    with pytest.raises(StoreError):
        thread.call(cache)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_layer_cache_checked_ahead_of_time(store: Store) -> None:
    thread = StoreThread()
    cache = LayerCache(store, refresh=0.8, early=thread.submit)
    assert thread.call(cache.layers) == {}
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert cache.cached() is not None, "mail would have waited for the database"
        time.sleep(0.02)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_milter_service_checks_its_lists_ahead_of_time(store: Store, make_config) -> None:
    service = Service(make_config(lists_refresh_seconds=1.0), store=store)
    waited = 0
    call = service.db.call

    def counted(fn):  # the calls a mail thread waits for
        nonlocal waited
        waited += 1
        return call(fn)

    service.db.call = counted  # type: ignore[method-assign]
    assert len(service.lists()) == 0 and waited == 1
    with store.session() as s:
        entries.add_entry(s, None, "block", "@new.example")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        index = service.lists()
        service.personal_layers()
        time.sleep(0.02)
    assert len(index) == 1
    assert waited == 2  # the first lists and the first layers; every later check was ahead of time
