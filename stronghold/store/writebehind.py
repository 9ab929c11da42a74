"""The database thread: reads off the mail threads, writes queued and committed in batches."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from sqlalchemy.orm import Session

from stronghold.store import messagelog
from stronghold.store.db import Store
from stronghold.store.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreThread:
    """Runs every database call on threads that Python itself created.

    pymilter calls us on libmilter's threads, whose Python thread states it
    manages by hand; C libraries that re-enter Python through PyGILState (the
    sqlite3 module does when a pooled connection is closed) abort the process
    on such threads.  Database work therefore never runs on them: reads run on
    one store thread (the caller waits), writes on another.  Writes are queued
    without waiting, so a slow database does not slow mail, and those that
    arrive within ``linger`` seconds are committed together (one transaction
    of ten log rows costs about a sixth of ten transactions of one; 0.25 s
    rather than 0.05 s halved PostgreSQL's CPU per message with one node and
    took four nodes from 0.36 to 0.13 ms, docs/scaling.md).  A batch
    the database refuses (locked, down) stays queued and is retried every
    ``retry`` seconds; beyond ``max_queued`` writes the oldest are dropped,
    with an error saying how many.
    """

    def __init__(self, timeout: float = 15.0, linger: float = 0.25, retry: float = 1.0,
                 max_queued: int = 50_000) -> None:
        self.timeout = timeout
        self.linger = linger
        self.retry = retry
        self.max_queued = max_queued
        self.dropped = 0
        self._reader: ThreadPoolExecutor | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._pending: list[Callable[[Session], None] | messagelog.LogEntry] = []
        self._flush_queued = False

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._lock:
            if self._reader is None or self._writer is None or self._pid != os.getpid():  # new after fork
                self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
                self._pid = os.getpid()
            return self._reader, self._writer

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the store thread and wait; StoreError if it takes too long."""
        future = self._pools()[0].submit(fn)
        try:
            return future.result(self.timeout)
        except FutureTimeout as exc:
            raise StoreError(f"database did not answer within {self.timeout:.0f}s") from exc

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the store thread without waiting for it (``fn`` deals with its own failures)."""
        self._pools()[0].submit(fn)

    @property
    def queued(self) -> int:
        """How many writes wait for the database."""
        with self._lock:
            return len(self._pending)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every write queued so far is committed; StoreError if some
        are still waiting for the database after ``timeout`` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                self._pools()[1].submit(lambda: None).result(max(left, 0) + self.linger)
            except FutureTimeout:
                pass
            waiting = self.queued
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise StoreError(f"{waiting} queued writes not taken by the database")
            time.sleep(min(self.retry, max(deadline - time.monotonic(), 0)))

    def write(self, op: Callable[[Session], None] | messagelog.LogEntry, store: Store,
              on_done: Callable[[Exception | None], None]) -> None:
        """Queue a write (a function of a session, or message-log rows); queued
        writes are committed together in one transaction, log rows in one
        statement per table."""
        with self._lock:
            self._pending.append(op)
            if self._flush_queued:
                return
            self._flush_queued = True
        self._pools()[1].submit(self._flush, store, on_done, self.linger)

    def _flush(self, store: Store, on_done: Callable[[Exception | None], None], wait: float) -> None:
        time.sleep(wait)  # let more writes join this transaction
        with self._lock:
            batch, self._pending, self._flush_queued = self._pending, [], False
        if not batch:
            return
        try:
            self._commit(store, batch)
        except StoreError as exc:
            on_done(exc)
            self._requeue(batch, store, on_done)
        except Exception:  # a write no database takes must not take the batch with it
            log.exception("message log: a batch of %d writes failed; writing them one by one", len(batch))
            self._one_by_one(batch, store, on_done)
        else:
            on_done(None)

    @staticmethod
    def _commit(store: Store, batch: list[Callable[[Session], None] | messagelog.LogEntry]) -> None:
        """Write ``batch`` in one transaction: log rows in one statement per table, then the rest."""
        with store.session() as session:
            messagelog.write(session, [op for op in batch if isinstance(op, messagelog.LogEntry)])
            for op in batch:
                if not isinstance(op, messagelog.LogEntry):
                    op(session)

    def _one_by_one(self, batch: list[Callable[[Session], None] | messagelog.LogEntry], store: Store,
                    on_done: Callable[[Exception | None], None]) -> None:
        """Write each of ``batch`` alone after the batch raised something other than StoreError
        (which the thread's pool kept to itself: every row of the batch was lost unlogged).  A
        write that fails so is dropped with an error; at a StoreError (the database refusing),
        the rest is queued again."""
        for i, op in enumerate(batch):
            try:
                self._commit(store, [op])
            except StoreError as exc:
                on_done(exc)
                self._requeue(batch[i:], store, on_done)
                return
            except Exception:  # this write only is lost, and says so
                self.dropped += 1
                log.exception("message log: a write failed and is dropped (%d dropped in all)", self.dropped)
        on_done(None)

    def _requeue(self, batch: list[Callable[[Session], None] | messagelog.LogEntry], store: Store,
                 on_done: Callable[[Exception | None], None]) -> None:
        """Put a refused batch back in front of the queue and retry it later."""
        with self._lock:
            self._pending = batch + self._pending
            excess = len(self._pending) - self.max_queued
            if excess > 0:
                del self._pending[:excess]
                self.dropped += excess
            retry_queued, self._flush_queued = self._flush_queued, True
        if excess > 0:
            log.error("message log: database refusing writes; %d oldest queued entries dropped (%d in all)",
                      excess, self.dropped)
        if not retry_queued:
            self._pools()[1].submit(self._flush, store, on_done, self.retry)
