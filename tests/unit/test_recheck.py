"""Cached store data checked ahead of time: mail does not wait for the check, a dead database is still noticed."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stronghold.personal import LayerCache
from stronghold.store import entries
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.store.recheck import Recheck
from stronghold.store.writebehind import StoreThread


class Handed:
    """Keeps what ``Recheck`` hands over, to run when the test says."""

    def __init__(self) -> None:
        self.functions: list[Callable[[], None]] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        self.functions.append(fn)


def test_fresh_only_after_a_check_and_for_its_time() -> None:
    recheck = Recheck(0.3, lambda: None)
    assert not recheck.fresh()
    recheck.succeeded(recheck.began())
    assert recheck.fresh()
    time.sleep(0.32)
    assert not recheck.fresh()
    recheck.succeeded(recheck.began())
    recheck.expire()
    assert not recheck.fresh()


def test_one_early_check_past_half_the_time_and_none_before() -> None:
    handed = Handed()
    recheck = Recheck(0.4, lambda: None, early=handed)
    recheck.succeeded(recheck.began())
    assert recheck.fresh() and handed.functions == []  # young: nothing handed over
    time.sleep(0.22)
    assert recheck.fresh() and recheck.fresh() and len(handed.functions) == 1  # one, however many messages


def test_an_early_check_that_succeeds_keeps_the_value_fresh() -> None:
    handed = Handed()
    recheck: Recheck

    def check() -> None:
        recheck.succeeded(recheck.began())

    recheck = Recheck(0.3, check, early=handed)
    recheck.succeeded(recheck.began())
    for _ in range(4):  # 0.6 s: twice the time, the value never stale
        time.sleep(0.16)
        assert recheck.fresh()
        while handed.functions:
            handed.functions.pop()()
    assert handed.functions == []


def test_an_early_check_that_fails_leaves_the_next_check_to_mail(caplog: pytest.LogCaptureFixture) -> None:
    handed = Handed()

    def check() -> None:
        raise StoreError("database error: gone")

    recheck = Recheck(0.3, check, early=handed)
    recheck.succeeded(recheck.began())
    time.sleep(0.16)
    assert recheck.fresh()
    with caplog.at_level(logging.INFO, logger="stronghold.store.recheck"):
        handed.functions.pop()()
    assert "early check of the cached store data failed: database error: gone" in caplog.text
    assert recheck.fresh() and handed.functions == []  # not handed over again at every message
    time.sleep(0.16)
    assert not recheck.fresh()  # the refresh time is out: mail asks, and fails, as without early checks


def _unreachable(store: Store, tmp_path: Path) -> None:
    """The SQLite file replaced by a folder: every new connection fails."""
    store.engine.dispose()
    path = Path(store.engine.url.database or "")
    shutil.move(path, tmp_path / "moved.db")
    path.mkdir()


def test_list_cache_checked_on_the_store_thread_ahead_of_time(store: Store) -> None:
    thread = StoreThread()
    cache = entries.ListCache(store, refresh=0.5, early=thread.submit)
    assert len(thread.call(cache)) == 0
    with store.session() as s:
        entries.add_entry(s, None, "block", "@new.example")
    deadline = time.monotonic() + 1.5  # three refresh times
    seen = 0
    while time.monotonic() < deadline:
        index = cache.cached()
        assert index is not None, "mail would have waited for the database"
        seen = len(index)
        time.sleep(0.02)
    assert seen == 1  # the edit arrived without mail asking the store


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # made unreachable by moving its file
def test_list_cache_notices_a_dead_database_within_its_refresh(store: Store, tmp_path: Path) -> None:
    thread = StoreThread()
    cache = entries.ListCache(store, refresh=0.5, early=thread.submit)
    thread.call(cache)
    _unreachable(store, tmp_path)
    time.sleep(0.3)
    assert cache.cached() is not None  # the early check is handed over, fails on the store thread
    time.sleep(0.3)
    assert cache.cached() is None
    with pytest.raises(StoreError):
        thread.call(cache)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_layer_cache_checked_ahead_of_time(store: Store) -> None:
    thread = StoreThread()
    cache = LayerCache(store, refresh=0.4, early=thread.submit)
    assert thread.call(cache.layers) == {}
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        assert cache.cached() is not None, "mail would have waited for the database"
        time.sleep(0.02)
