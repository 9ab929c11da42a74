"""What a running filter holds: config, model, scanner, lists, store and policy.

The milter builds one ``Service`` per process; ``stronghold scan`` and the web
UI use the same pieces.  Nothing here speaks the milter protocol.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from stronghold import metrics
from stronghold.antivirus import Scanner, make_scanner
from stronghold.authres import Authenticator
from stronghold.classifier import Model, ModelError, passport_path, table_path
from stronghold.config import Config
from stronghold.dnscache import Dns
from stronghold.engine import Policy, check_recipient, evaluate, hold_failed
from stronghold.lists import ListIndex
from stronghold.message import ParsedMessage
from stronghold.metrics import Recorder
from stronghold.personal import Layer, LayerCache
from stronghold.spool import Stream
from stronghold.store import messagelog, quarantine
from stronghold.store.db import Store
from stronghold.store.entries import ListCache
from stronghold.store.errors import StoreError
from stronghold.tokens import features
from stronghold.verdict import Check, Envelope, RecipientDecision, Verdict

log = logging.getLogger(__name__)
T = TypeVar("T")
try:
    VERSION = importlib.metadata.version("mail-stronghold")
except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
    VERSION = "0+unknown"


class Incidents:
    """Log a failing dependency once when it starts failing and once when it recovers."""

    REMIND_SECONDS = 300.0

    def __init__(self) -> None:
        self._failing: dict[str, float] = {}
        self._lock = threading.Lock()
        self.recorder: Recorder = metrics.NULL

    def failed(self, kind: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._failing.get(kind)
            self.recorder.incident(kind, started=last is None)
            if last is None or now - last > self.REMIND_SECONDS:
                log.error("%s failing: %s", kind, detail)
                self._failing[kind] = now

    def ok(self, kind: str) -> None:
        with self._lock:
            if self._failing.pop(kind, None) is not None:
                log.warning("%s recovered", kind)
                self.recorder.recovered(kind)


class ModelHolder:
    """The current model, reloaded when its file changes (or on request).

    A new file is loaded fully and verified before it replaces the old model,
    so no message is scored by a half-written one; a file that fails to load
    leaves the old model in place.
    """

    CHECK_SECONDS = 1.0

    def __init__(self, path: os.PathLike[str] | str, incidents: Incidents) -> None:
        self.path = Path(path)
        self.incidents = incidents
        self._model: Model | None = None
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._checked = -math.inf  # never: monotonic time can be small after boot
        self._lock = threading.Lock()
        self.generation = 0
        self.external_generation: Callable[[], int] | None = None  # bumped on SIGHUP
        self._seen_external = 0

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        """Identity of the passport and the table: a change in either means "look again"."""
        stamps = []
        for path in (passport_path(self.path), table_path(self.path)):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload(self) -> None:
        with self._lock:
            self._checked = -math.inf  # never: monotonic time can be small after boot
            self._stamp = None

    def __call__(self) -> Model:
        now = time.monotonic()
        with self._lock:
            if self.external_generation is not None:
                wanted = self.external_generation()
                if wanted != self._seen_external:
                    self._seen_external, self._checked, self._stamp = wanted, -math.inf, None
            if now - self._checked >= self.CHECK_SECONDS or self._model is None:
                self._checked = now
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    try:
                        model = Model.load(self.path)
                    except ModelError as exc:
                        self.incidents.failed("model", str(exc))
                        self._stamp = stamp  # do not retry this same broken file on every message
                        if self._model is None:
                            raise
                    else:
                        self._model, self._stamp = model, stamp
                        self.generation += 1
                        self.incidents.ok("model")
                        log.info("model loaded: %s (threshold %.4f, %d ham + %d spam)", self.path,
                                 model.spam_threshold, model.passport.trained_ham,
                                 model.passport.trained_spam)
            if self._model is None:
                raise ModelError(f"no usable model at {self.path}")
            return self._model


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

    @property
    def queued(self) -> int:
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
        entries = [op for op in batch if isinstance(op, messagelog.LogEntry)]
        try:
            with store.session() as session:
                messagelog.write(session, entries)
                for op in batch:
                    if not isinstance(op, messagelog.LogEntry):
                        op(session)
        except StoreError as exc:
            on_done(exc)
            self._requeue(batch, store, on_done)
        else:
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


@dataclass
class Outcome:
    verdict: Verdict
    tokens: set[str] | None
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (metrics.STAGES)


class Service:
    """Everything the milter (and other front ends) needs to decide about mail."""

    def __init__(self, cfg: Config, store: Store | None = None, scanner: Scanner | None = None) -> None:
        self.cfg = cfg
        self.policy = Policy.from_config(cfg)
        self.incidents = Incidents()
        self.store = store or Store(cfg.db_url)
        self.scanner = scanner or make_scanner(cfg.clamd_socket, cfg.clamd_timeout)
        self.model = ModelHolder(cfg.model_path, self.incidents)
        self._lists = ListCache(self.store, cfg.lists_refresh_seconds, cfg.user_threshold_bounds)
        self._layers = LayerCache(self.store, cfg.lists_refresh_seconds)
        self.db = StoreThread()
        self._next_purge = 0.0
        self._version: tuple[int, str] = (-1, "")
        self.authenticator = Authenticator(cfg.auth_mode, cfg.authserv_id,
                                           Dns(cfg.dns_nameservers, cfg.dns_port, cfg.dns_timeout),
                                           every_message=cfg.dmarc_every_message)

    def lists(self) -> ListIndex:
        try:
            index = self._lists.cached()
            if index is None:  # an empty index is falsy: compare with None
                index = self.db.call(self._lists)
        except StoreError as exc:
            self.incidents.failed("database", str(exc))
            raise
        self.incidents.ok("database")
        return index

    def personal_layers(self) -> Mapping[str, Layer]:
        """Recipients' personal layers; the store is asked (off the mail thread) every few seconds."""
        cached = self._layers.cached()
        return cached if cached is not None else self.db.call(self._layers.layers)

    def check_recipient(self, sender: str, recipient: str) -> RecipientDecision | None:
        """RCPT-time block check; None when allowed or when the store is down
        (the end-of-message check then applies on_store_error)."""
        try:
            return check_recipient(sender, recipient, self.lists())
        except StoreError:
            return None

    def decide(self, envelope: Envelope, msg: ParsedMessage, stream: Stream | None,
               oversize: bool = False) -> Outcome:
        started = time.perf_counter()
        tokens = features(msg)
        stages = {"classifier": time.perf_counter() - started}
        verdict = evaluate(envelope, msg, stream, self.scanner, self.model, self.lists,
                           self.policy, oversize=oversize, tokens=tokens, authenticator=self.authenticator,
                           layers=self.personal_layers, timings=stages)
        clamd = verdict.check(Check.ANTIVIRUS)  # the model and the store report their own incidents
        if clamd is not None and clamd.error is not None:
            self.incidents.failed("clamd", clamd.error)
        elif clamd is not None:
            self.incidents.ok("clamd")
        kept = tokens if self.cfg.log_tokens and verdict.score is not None else None
        return Outcome(verdict, kept, time.perf_counter() - started, stages)

    def version_header(self) -> str:
        """X-Stronghold-Version: the package's version and the model that scored the message."""
        generation = self.model.generation
        if self._version[0] != generation:
            try:
                passport = self.model().passport
                model = f"model {metrics.model_id(passport.file_sha256, passport.created)}"
            except ModelError:
                model = "model none"
            self._version = (generation, f"{VERSION} {model}")
        return self._version[1]

    def hold(self, envelope: Envelope, verdict: Verdict, raw: bytes, subject: str) -> list[int]:
        """Store the copies ``verdict`` holds, one quarantine item per recipient, and
        wait until they are committed; StoreError if they are not (the caller tempfails).

        Each item's trace is the message's steps and that recipient's own, never
        another recipient's lists.  The bytes are stored once however many hold them.
        """
        held = verdict.held
        message_steps = " ".join(str(s) for s in verdict.trace)

        def write() -> list[int]:
            ids: list[int] = []
            with self.store.session() as session:
                for d in held:
                    own = " ".join(str(s) for s in d.trace)
                    ids += quarantine.hold(session, raw, recipients=[d.recipient], sender=envelope.sender,
                                           subject=subject, queue_id=envelope.queue_id, score=verdict.score,
                                           category=d.category.value, reason=d.reason,
                                           trace=f"{message_steps} {own}".strip(), virus=verdict.virus)
            return ids

        try:
            ids = self.db.call(write)
        except StoreError as exc:
            self.incidents.failed("quarantine", str(exc))
            raise
        self.incidents.ok("quarantine")
        log.info("%s: held for %s (quarantine items %s)", envelope.queue_id or "-",
                 ",".join(f"<{d.recipient}>" for d in held), ",".join(map(str, ids)))
        return ids

    @staticmethod
    def hold_failed(outcome: Outcome, detail: str) -> Outcome:
        """The outcome once holding failed: the whole message is tempfailed."""
        return Outcome(hold_failed(outcome.verdict, detail), outcome.tokens, outcome.seconds, outcome.stages)

    PURGE_EVERY = 3600.0

    def record(self, envelope: Envelope, msg: ParsedMessage, outcome: Outcome) -> None:
        """Queue the message-log write; a failure is logged (once per incident), never fatal.

        About once an hour the same queue also deletes entries older than
        ``log_retention_days`` and quarantined mail older than ``quarantine_retention_days``.
        """
        self.db.write(messagelog.entry(envelope, msg, outcome.verdict, outcome.tokens), self.store,
                      self._log_written)
        self.incidents.recorder.message(outcome)
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self.PURGE_EVERY
            days, held_days = self.cfg.log_retention_days, self.cfg.quarantine_retention_days
            if days:
                self.db.write(lambda session: self._purged("message log", messagelog.purge_older_than(
                    session, days), days), self.store, self._log_written)
            if held_days:
                self.db.write(lambda session: self._purged("quarantine", quarantine.purge_older_than(
                    session, held_days), held_days), self.store, self._log_written)

    @staticmethod
    def _purged(what: str, count: int, days: int) -> None:
        if count:
            log.info("%s: deleted %d entries older than %d days", what, count, days)

    def record_rcpt_reject(self, envelope: Envelope, decision: RecipientDecision) -> None:
        trace = " ".join(str(s) for s in decision.trace)
        self.incidents.recorder.rcpt_reject(decision)
        self.db.write(messagelog.rcpt_reject_entry(envelope, decision.recipient, decision.reason, trace),
                      self.store, self._log_written)

    def _log_written(self, error: Exception | None) -> None:
        if error is None:
            self.incidents.ok("message log")
        else:
            self.incidents.failed("message log", str(error))

