"""pymilter adapter: protocol events -> Service -> milter replies.  No policy here.

One ``StrongholdMilter`` per SMTP connection.  Per-message state is reset at
MAIL FROM and on abort; the message is spooled to a temporary file (memory up
to ``spool_memory_bytes``); it is parsed once at end of message.
"""

from __future__ import annotations

import email.header
import logging
from typing import Any

import Milter

from stronghold.engine import SPAM_HEADERS, Envelope
from stronghold.message import MAX_BYTES, parse
from stronghold.service import Service, log_line
from stronghold.spool import Spool
from stronghold.verdict import Action

log = logging.getLogger(__name__)
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT | Milter.QUARANTINE
_STRIP = {h.lower() for h in SPAM_HEADERS}


def header_value(text: str) -> str:
    """``text`` as a header value: as is when ASCII, else RFC 2047 encoded."""
    if text.isascii():
        return text
    return email.header.Header(text, "utf-8").encode()


def _bare(address: str) -> str:
    return address.strip().strip("<>").strip()


class StrongholdMilter(Milter.Base):
    """Callbacks that never refuse are ``@noreply``: where Postfix agrees, it does
    not wait for an answer to each header and body chunk (fewer round trips)."""

    service: Service  # set by serve() before the first connection

    def __init__(self) -> None:
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
        self.strip: list[tuple[str, int]] = []
        self.subject_index = 0
        self.size = 0
        self.oversize = False

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
            log.info("%s: from=<%s> to=<%s> verdict=blocked action=reject stage=rcpt trace=%s",
                     env.queue_id or "-", self.sender, rcpt, " ".join(map(str, decision.trace)))
            self.service.record_rcpt_reject(env, decision)
            self.setreply("550", "5.7.1", "Sender is blocked by the recipient")
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
    @Milter.noreply
    def header(self, name: str, value: Any) -> int:
        key = name.lower()
        self.seen_headers[key] = self.seen_headers.get(key, 0) + 1
        if key in _STRIP:
            self.strip.append((name, self.seen_headers[key]))
        if key == "subject" and not self.subject_index:
            self.subject_index = self.seen_headers[key]
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        self._write(name.encode("ascii", "replace") + b": " + raw + b"\r\n")
        return Milter.CONTINUE

    header.error_strategy = "bytes"  # pymilter: pass raw bytes

    @Milter.noreply
    def eoh(self) -> int:
        self._write(b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self._write(chunk)
        return Milter.CONTINUE

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
        raw = self.spool.head(MAX_BYTES + 1)  # one byte more, so parse() records the truncation
        msg = parse(raw)
        msg.size = self.size
        self.spool.seek(0)
        outcome = self.service.decide(env, msg, self.spool, oversize=self.oversize)
        verdict = outcome.verdict
        log.info("%s", log_line(env, outcome))
        self.service.record(env, msg, outcome)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            code, xcode, text = verdict.smtp_reply or ("451", "4.7.1", "Try again later")
            self.setreply(code, xcode, text)
            return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
        for name, index in reversed(self.strip):
            self.chgheader(name, index, "")
        auth = self.service.authenticator
        for index in reversed(auth.forged_positions(msg.headers)):
            self.chgheader("Authentication-Results", index, "")
        for name, value in verdict.headers:
            self.addheader(name, value)
        if verdict.auth is not None and auth.mode == "check":
            self.addheader("Authentication-Results", verdict.auth.header_value(auth.authserv_id), 0)
        if verdict.subject_prefix:
            subject = msg.header("subject") or ""
            if not subject.startswith(verdict.subject_prefix):
                new = header_value(f"{verdict.subject_prefix} {subject}".strip())
                if self.subject_index:
                    self.chgheader("Subject", self.subject_index, new)
                else:
                    self.addheader("Subject", new)
        for rcpt in verdict.drop_recipients:
            self.delrcpt(f"<{self.rcpt_as_given.get(rcpt, rcpt)}>")
        if verdict.action is Action.QUARANTINE:
            self.quarantine(f"stronghold: {verdict.category.value} {verdict.virus or ''}".strip())
        return Milter.ACCEPT

    def abort(self) -> int:
        self._reset()
        return Milter.CONTINUE

    def close(self) -> int:
        self._reset()
        return Milter.CONTINUE
