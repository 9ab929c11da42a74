"""What a running filter holds: config, model, scanner, lists, store and policy.

The milter builds one ``Service`` per process; ``stronghold scan`` and the web
UI use the same pieces.  Nothing here speaks the milter protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from stronghold import __version__ as VERSION
from stronghold.antivirus import Scanner, make_scanner
from stronghold.authres import Authenticator
from stronghold.config import Config
from stronghold.dnscache import Dns
from stronghold.engine import evaluate
from stronghold.incidents import Incidents
from stronghold.lists import ListIndex
from stronghold.message import ParsedMessage
from stronghold.modelfile import ModelError, model_id
from stronghold.modelholder import ModelHolder
from stronghold.outcome import Outcome
from stronghold.personal import Layer, LayerCache
from stronghold.policy import Policy
from stronghold.precedence import check_recipient
from stronghold.routing import hold_failed
from stronghold.spool import Stream
from stronghold.store import messagelog, quarantine
from stronghold.store.db import Store
from stronghold.store.entries import ListCache
from stronghold.store.errors import StoreError
from stronghold.store.writebehind import StoreThread
from stronghold.tokens import features
from stronghold.verdict import Check, Envelope, RecipientDecision, Verdict

log = logging.getLogger(__name__)


class Service:
    """Everything the milter (and other front ends) needs to decide about mail."""

    def __init__(self, cfg: Config, store: Store | None = None, scanner: Scanner | None = None) -> None:
        self.cfg = cfg
        self.policy = Policy.from_config(cfg)
        self.incidents = Incidents()
        self.store = store or Store(cfg.db_url)
        self.scanner = scanner or make_scanner(cfg.clamd_socket, cfg.clamd_timeout)
        self.model = ModelHolder(cfg.model_path, self.incidents)
        self.db = StoreThread()
        self._lists = ListCache(self.store, cfg.lists_refresh_seconds, cfg.user_threshold_bounds,
                                early=self.db.submit)
        self._layers = LayerCache(self.store, cfg.lists_refresh_seconds, early=self.db.submit)
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
               oversize: bool = False, scanner: Scanner | None = None) -> Outcome:
        """``scanner``: instead of the service's own (one whose scan is begun already)."""
        started = time.perf_counter()
        tokens = features(msg)
        stages = {"classifier": time.perf_counter() - started}
        verdict = evaluate(envelope, msg, stream, scanner or self.scanner, self.model, self.lists,
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
                model = f"model {model_id(self.model().passport)}"
            except ModelError:
                model = "model none"
            self._version = (generation, f"{VERSION} {model}")
        return self._version[1]

    def hold(self, envelope: Envelope, verdict: Verdict, raw: bytes, subject: str,
             header_from: str | None = None) -> list[int]:
        """Store the copies ``verdict`` holds (``quarantine.hold_verdict``) and wait
        until they are committed; StoreError if they are not (the caller tempfails)."""
        held = verdict.held

        def write() -> list[int]:
            with self.store.session() as session:
                return quarantine.hold_verdict(session, envelope, verdict, raw, subject, header_from)

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

