"""pymilter adapter: protocol events -> Service -> milter replies.  No policy here.

One ``StrongholdMilter`` per SMTP connection.  Per-message state is reset at
MAIL FROM and on abort; the message is spooled to a temporary file (memory up
to ``spool_memory_bytes``); it is parsed once at end of message.

At end of message the verdict routes each recipient (docs/precedence.md):
copies to hold are stored first (tempfail if they cannot be), then the
recipients not receiving the delivered copy are removed with ``delrcpt``, and
the delivered copy gets headers describing only its own recipients; when
nobody receives it, the message is discarded after the hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import Any

import Milter

from stronghold import headers
from stronghold.logfmt import MessageLine, RcptLine
from stronghold.message import MAX_BYTES, parse
from stronghold.policy import REPLY_BLOCKED
from stronghold.service import Service
from stronghold.spool import Spool
from stronghold.store.errors import StoreError
from stronghold.verdict import Action, Envelope

log = logging.getLogger(__name__)
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT


def factory(service: Service) -> Callable[[], StrongholdMilter]:
    """pymilter's ``Milter.factory``: one ``StrongholdMilter`` per connection, each given ``service``."""
    def connection() -> StrongholdMilter:
        return StrongholdMilter(service)
    return connection


def _bare(address: str) -> str:
    return address.strip().strip("<>").strip()


class StrongholdMilter(Milter.Base):
    """Callbacks that never refuse are ``@noreply``: where Postfix agrees, it does
    not wait for an answer to each header and body chunk (fewer round trips)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.client_ip = ""
        self.helo = ""
        self.spool: Spool | None = None
        self._reset()

    def _reset(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.spool = None
        self.sender = ""
        self.recipients: list[str] = []  # lower-cased, for lists and logs
        self.rcpt_as_given: dict[str, str] = {}  # for delrcpt, which wants Postfix's own form
        self.seen_headers: dict[str, int] = {}
        self.strip: list[tuple[str, int]] = []  # (name, index) of X-Spam-*/X-Stronghold-* from outside
        self.strip_spans: list[tuple[int, int]] = []  # where they are in the spool
        self.subject_index = 0
        self.subject_raw: bytes | None = None
        self.size = 0
        self.oversize = False
        self.in_body = False  # the blank line after the headers is spooled

    # -- connection and envelope ---------------------------------------------
    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.client_ip = hostaddr[0] if isinstance(hostaddr, tuple) else str(hostaddr)
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        self.helo = hostname
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset()
        self.sender = _bare(mailfrom)
        self.spool = Spool(self.service.cfg.spool_memory_bytes, self.service.cfg.data_dir)
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        given = _bare(to)
        rcpt = given.lower()
        decision = self.service.check_recipient(self.sender, rcpt)
        if decision is not None:
            env = Envelope(self.sender, (rcpt,), self.client_ip, self.helo, self.getsymval("i") or "")
            log.info("%s", RcptLine(env, decision))
            self.service.record_rcpt_reject(env, decision)
            self.setreply(*REPLY_BLOCKED)
            return Milter.REJECT
        self.recipients.append(rcpt)
        self.rcpt_as_given[rcpt] = given
        return Milter.CONTINUE

    def data(self) -> int:
        """Accepted on purpose: without a DATA callback Postfix sends the DATA-stage
        macros as a packet of their own that the milter never answers, and over
        TCP the next packet then waits ~40 ms for a delayed ACK (Nagle).  With it,
        macros and command travel together and are answered at once."""
        return Milter.CONTINUE

    # -- content ----------------------------------------------------------------
    def header(self, name: str, value: Any) -> int:
        """One header (Postfix does not wait for an answer where it agreed to that).

        Not ``@Milter.noreply``: its wrapper costs a Python call per header (~22 a message);
        ``header.milter_protocol`` below asks Postfix for the same, and the answer is
        NOREPLY whenever that was agreed (``_protocol``), as the wrapper would make it."""
        key = name.lower()
        seen = self.seen_headers[key] = self.seen_headers.get(key, 0) + 1
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        if key == "subject" and not self.subject_index:
            self.subject_index = seen
            self.subject_raw = raw
        spool = self.spool
        start = spool.size if spool is not None else 0
        self._write(name.encode("ascii", "replace") + b": " + raw + b"\r\n")
        if key.strip().startswith(headers.OWN_PREFIXES):  # headers.ours(name)
            self.strip.append((name, seen))
            if spool is not None:
                self.strip_spans.append((start, spool.size))
        return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE

    header.error_strategy = "bytes"  # type: ignore[attr-defined]  # pymilter: pass raw bytes
    header.milter_protocol = Milter.P_NR_HDR  # type: ignore[attr-defined]  # what @Milter.noreply declares

    # No end-of-headers callback (pymilter's Base.eoh: Postfix is told not to send it, one milter
    # command less per message): the blank line after the headers is spooled before the first
    # body chunk, or at end of message when there is no body.

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        if not self.in_body:
            self._end_headers()
        self._write(chunk)
        return Milter.CONTINUE

    def _end_headers(self) -> None:
        self.in_body = True
        self._write(b"\r\n")

    def _write(self, data: bytes) -> None:
        limit = self.service.cfg.max_message_bytes
        self.size += len(data)
        if self.spool is None:
            return
        room = limit - self.spool.size
        if room <= 0 or len(data) > room:
            self.oversize = True
            data = data[:max(room, 0)]
        if data:
            self.spool.write(data)

    # -- decision ---------------------------------------------------------------
    def eom(self) -> int:
        env = Envelope(self.sender, tuple(self.recipients), self.client_ip, self.helo,
                       self.getsymval("i") or "")
        if self.spool is None:  # no MAIL FROM seen: nothing to decide about
            return Milter.TEMPFAIL
        if not self.in_body:  # a message without a body
            self._end_headers()
        started = perf_counter()
        raw = self.spool.head(MAX_BYTES + 1)  # one byte more, so parse() records the truncation
        msg = parse(raw)
        msg.size = self.size
        self.spool.seek(0)
        parsed = perf_counter()
        outcome = self.service.decide(env, msg, self.spool, oversize=self.oversize)
        if outcome.verdict.held:  # stored before anything is accepted; if not stored, tempfail
            subject = headers.decode_value(self.subject_raw) if self.subject_raw is not None else ""
            try:
                self.service.hold(env, outcome.verdict, self._stored_copy(), subject, msg.header("from") or "")
            except StoreError as exc:
                outcome = self.service.hold_failed(outcome, str(exc))
        verdict = outcome.verdict
        outcome.stages["parse"] = parsed - started
        outcome.stages["total"] = perf_counter() - started
        log.info("%s", MessageLine(env, outcome))
        self.service.record(env, msg, outcome)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            code, xcode, text = verdict.smtp_reply or ("451", "4.7.1", "Try again later")
            self.setreply(code, xcode, text)
            return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
        if not verdict.delivered:  # every copy is held or rejected: accept and discard
            return Milter.DISCARD
        for name, index in reversed(self.strip):
            self.chgheader(name, index, "")
        auth = self.service.authenticator
        for index in reversed(auth.forged_positions(msg.headers)):
            self.chgheader("Authentication-Results", index, "")
        for name, value in verdict.headers:
            self.addheader(name, value)
        self.addheader("X-Stronghold-Version", self.service.version_header())
        if verdict.auth is not None and auth.mode == "check":
            self.addheader("Authentication-Results", verdict.auth.header_value(auth.authserv_id), 0)
        if verdict.subject_prefix:
            new = headers.prefixed(self.subject_raw, verdict.subject_prefix)
            if new is not None:
                if self.subject_index:
                    self.chgheader("Subject", self.subject_index, new)
                else:
                    self.addheader("Subject", new)
        for d in verdict.decisions:
            if not d.route.delivered:
                self.delrcpt(f"<{self.rcpt_as_given.get(d.recipient, d.recipient)}>")
        return Milter.ACCEPT

    def _stored_copy(self) -> bytes:
        """The message as received, less the X-Spam-*/X-Stronghold-* headers from outside
        (a released copy must not carry a forged verdict)."""
        assert self.spool is not None
        self.spool.seek(0)
        data = self.spool.read()
        for start, end in reversed(self.strip_spans):
            data = data[:start] + data[end:]
        return data

    def abort(self) -> int:
        self._reset()
        return Milter.CONTINUE

    def close(self) -> int:
        self._reset()
        return Milter.CONTINUE
