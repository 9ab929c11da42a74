"""When a value a milter caches from the store (lists, personal layers) is checked again."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from stronghold.store.errors import StoreError

log = logging.getLogger(__name__)


class Recheck:
    """Fresh for ``every`` seconds after a check that succeeded; then mail asks the store and waits.

    With ``early`` (how to run a function off the mail threads: the store thread's ``submit``), the
    first use past half of ``every`` hands one check to it and goes on with the cached value, so
    mail waits for the database only when that check has not succeeded in time.  A database that
    stops answering is noticed within ``every`` seconds either way: an early check that fails
    changes nothing (it is logged), and the next one is left to the mail thread at ``every``.
    """

    def __init__(self, every: float, check: Callable[[], object],
                 early: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.every = every
        self._check = check
        self._early = early
        self._lock = threading.Lock()
        self._checking = threading.Lock()  # one check at a time; readers never wait for it
        self._when = -math.inf  # when the last check that succeeded began
        self._expired = -math.inf  # checks that began before this do not count
        self._pending = False  # an early check handed over and not yet succeeded

    def fresh(self) -> bool:
        """Whether the cached value may be used now without asking the store."""
        now = time.monotonic()
        with self._lock:
            age = now - self._when
            if age >= self.every:
                return False
            start = self._early is not None and not self._pending and age >= self.every / 2
            if start:
                self._pending = True
        if start and self._early is not None:
            try:
                self._early(self._check_early)
            except RuntimeError:  # the store thread is shutting down: mail checks itself at ``every``
                log.debug("early check not handed over: the store thread is shutting down")
        return True

    @contextmanager
    def checking(self) -> Iterator[None]:
        """Around one check of the store: one at a time, and fresh from its start once it
        succeeded (an exception leaves the value as stale as it was)."""
        with self._checking:
            began = time.monotonic()
            yield
            with self._lock:
                if began >= self._expired:  # a check under way when ``expire`` was called does not count
                    self._when = max(self._when, began)
                self._pending = False

    def expire(self) -> None:
        """Make the next use check the store (a check under way now does not count)."""
        with self._lock:
            self._when = -math.inf
            self._expired = time.monotonic()

    def _check_early(self) -> None:
        try:
            self._check()
        except StoreError as exc:  # left pending: the mail thread checks (and reports) at ``every``
            log.info("early check of the cached store data failed: %s", exc)
        except Exception:  # nobody waits for this thread: say it here; mail checks at ``every``
            log.exception("early check of the cached store data failed")
