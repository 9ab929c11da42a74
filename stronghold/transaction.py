"""One message as a milter receives it, and what to answer at its end: no protocol here.

Both milter engines (``milter``: libmilter through pymilter; ``nativemilter``: the protocol
in C) feed a ``Transaction`` the envelope and headers as they arrive, and at end of message
ask ``conclude`` for an ``Answer``: the reply and the edits of the delivered copy, which
each engine sends its own way.

At end of message the verdict routes each recipient (docs/precedence.md): copies to hold
are stored first (tempfail if they cannot be), then the recipients not receiving the
delivered copy are removed, and the delivered copy gets headers describing only its own
recipients; when nobody receives it, the message is discarded after the hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter

from stronghold import antivirus, headers
from stronghold.lists import recipient_address
from stronghold.logfmt import FailedLine, MessageLine, RcptLine
from stronghold.message import MAX_BYTES, decode_bytes, parse
from stronghold.policy import REPLY_BLOCKED, REPLY_TEMPFAIL
from stronghold.service import Service
from stronghold.spool import Spool
from stronghold.store.errors import StoreError
from stronghold.verdict import Action, Envelope

log = logging.getLogger(__name__)

# what an Answer asks of the MTA at the end
ACCEPT, REJECT, TEMPFAIL, DISCARD = "accept", "reject", "tempfail", "discard"
AUTHRES = "authentication-results"  # its copies with our id from outside leave every copy


def bare(address: str) -> str:
    """An envelope address without its angle brackets."""
    return address.strip().strip("<>").strip()


def readable(address: str) -> str:
    """An envelope address as text the filter keeps (lists, logs, the store): 8-bit bytes the
    MTA passed without SMTPUTF8 arrive as surrogate escapes, which no database takes (SQLite's
    and PostgreSQL's drivers raise UnicodeEncodeError), read as UTF-8 if they are, else
    Latin-1, as header bytes are (``message.decode_bytes``).  The MTA's own form stays for
    what goes back to it (``delrcpt``)."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return decode_bytes(address.encode("utf-8", "surrogateescape"), None)[0]
    return address


@dataclass
class Answer:
    """The reply to a command, and at end of message the edits that go before it.

    ``edits`` in order: ("change", name, index, value) (an empty value deletes the header),
    ("add", name, value, index) (index -1 appends, else inserts there), ("delrcpt", address).
    """

    action: str
    reply: tuple[str, str, str] | None = None  # SMTP code, enhanced code, text
    edits: list[tuple] = field(default_factory=list)


def check_recipient(service: Service, sender: str, given: str, client_ip: str, helo: str,
                    queue_id: str) -> Answer | None:
    """RCPT time: the block lists; an Answer refusing the recipient, or None to take it."""
    rcpt = recipient_address(readable(given), service.cfg.recipient_delimiter)
    decision = service.check_recipient(sender, rcpt)
    if decision is None:
        return None
    env = Envelope(sender, (rcpt,), client_ip, helo, queue_id)
    log.info("%s", RcptLine(env, decision))
    service.record_rcpt_reject(env, decision)
    return Answer(REJECT, REPLY_BLOCKED)


class Transaction:
    """One message between MAIL FROM and its end: envelope, spool and what the headers told."""

    def __init__(self, service: Service, sender: str) -> None:
        self.service = service
        self.sender = readable(bare(sender))
        self.spool = Spool(service.cfg.spool_memory_bytes, service.cfg.data_dir)
        self.recipients: list[str] = []  # as owners' addresses are stored (recipient_address), each once
        self.rcpt_as_given: dict[str, list[str]] = {}  # every form given of each, for delrcpt
        self.seen_headers: dict[str, int] = {}  # of the names noted (Subject, ours)
        self.strip: list[tuple[str, int]] = []  # (name, index) of X-Spam-*/X-Stronghold-* from outside
        self.strip_spans: list[tuple[int, int]] = []  # where they are in the spool
        self.authres: list[tuple[bytes, int, int]] = []  # each Authentication-Results: (value, start, end)
        self.subject_index = 0
        self.subject_raw: bytes | None = None
        self.size = 0
        self.oversize = False
        self.spool_error: str | None = None  # why the spool could not take the message

    def close(self) -> None:
        self.spool.close()

    def write(self, data: bytes) -> None:
        """Spool ``data``.  A spool that cannot take it (data_dir full, gone, failing) is noted
        and the message tempfailed at its end: raised from a callback the MTA does not wait an
        answer for (body, headers), libmilter answered nothing more and Postfix waited its
        milter_content_timeout (5 minutes) on each attempt."""
        if self.spool_error is not None:
            return
        try:
            self.spool.write(data)
        except OSError as exc:
            self.spool_error = str(exc)
            self.spool.close()

    def add_recipient(self, given: str) -> None:
        """One RCPT.  ``Victim@`` and ``"victim"@`` are one recipient with one decision
        (``lists.recipient_address``), and a copy not delivered is taken from every form the MTA
        was given (else the other form got it)."""
        rcpt = recipient_address(readable(given), self.service.cfg.recipient_delimiter)
        forms = self.rcpt_as_given.setdefault(rcpt, [])
        if not forms:
            self.recipients.append(rcpt)
        if given not in forms:
            forms.append(given)

    def note_header(self, name: str, raw: bytes, start: int, end: int) -> None:
        """One header, spooled at ``start:end``: the first Subject, and each of ours from outside
        (X-Spam-*/X-Stronghold-*, stripped from every copy) with its index among its namesakes,
        as the MTA counts them when asked to change one."""
        self.note_headers([(name, raw, start, end)], end)

    def note_headers(self, batch: list[tuple[str, bytes, int, int]], cap: int) -> None:
        """``note_header`` for each (name, value, start, end) of ``batch``, positions cut at ``cap``
        (one call per batch: the native engine hands over ~20 headers at once)."""
        prefixes = headers.OWN_PREFIXES
        for name, raw, start, end in batch:
            key = name.lower()
            if key == "subject" or key.strip().startswith(prefixes):
                self._noted(key, name, raw, min(start, cap), min(end, cap))
            elif key == AUTHRES:
                self.authres.append((raw, min(start, cap), min(end, cap)))

    def _noted(self, key: str, name: str, raw: bytes, start: int, end: int) -> None:
        seen = self.seen_headers[key] = self.seen_headers.get(key, 0) + 1
        if key == "subject":
            if not self.subject_index:
                self.subject_index = seen
                self.subject_raw = raw
        else:
            self.strip.append((name, seen))
            self.strip_spans.append((start, end))

    def stored_copy(self) -> bytes:
        """The message as received, less the X-Spam-*/X-Stronghold-* headers from outside and
        the Authentication-Results with our id that the delivered copy loses too (a released
        copy must not carry a forged verdict, nor a forged "dkim=pass" under our name)."""
        values = [(AUTHRES, raw.decode("utf-8", "replace")) for raw, _, _ in self.authres]
        forged = [self.authres[n - 1][1:] for n in self.service.authenticator.forged_positions(values)]
        self.spool.seek(0)
        data = self.spool.read()
        kept, at = [], 0
        for start, end in sorted(self.strip_spans + forged):  # one pass: a header each is linear too
            kept.append(data[at:start])
            at = max(at, end)
        kept.append(data[at:])
        return b"".join(kept)

    def conclude(self, env: Envelope) -> Answer:
        """End of message: parse, decide, hold what is held, log; the Answer for the MTA."""
        if self.spool_error is not None:  # part of the message is missing: nothing to decide on
            log.error("%s", FailedLine(env, f"spool failed: {self.spool_error}"))
            self.service.incidents.failed("spool", self.spool_error)
            return Answer(TEMPFAIL, REPLY_TEMPFAIL)
        self.service.incidents.ok("spool")
        started = perf_counter()
        service = self.service
        # clamd gets the message first and scans while we parse and score (not for an oversize
        # one: the size policy may skip its scan)
        scanner = service.scanner if self.oversize else antivirus.start(service.scanner, self.spool)
        try:
            raw = self.spool.head(MAX_BYTES + 1)  # one byte more, so parse() records the truncation
            msg = parse(raw)
            msg.size = self.size
            self.spool.seek(0)
            parsed = perf_counter()
            outcome = service.decide(env, msg, self.spool, oversize=self.oversize, scanner=scanner)
        finally:
            antivirus.release(scanner)
        if outcome.verdict.held:  # stored before anything is accepted; if not stored, tempfail
            subject = headers.decode_value(self.subject_raw) if self.subject_raw is not None else ""
            try:
                service.hold(env, outcome.verdict, self.stored_copy(), subject, msg.header("from") or "")
            except StoreError as exc:
                outcome = service.hold_failed(outcome, str(exc))
        verdict = outcome.verdict
        outcome.stages["parse"] = parsed - started
        outcome.stages["total"] = perf_counter() - started
        log.info("%s", MessageLine(env, outcome))
        service.record(env, msg, outcome)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            reply = verdict.smtp_reply or ("451", "4.7.1", "Try again later")
            return Answer(REJECT if verdict.action is Action.REJECT else TEMPFAIL, reply)
        if not verdict.delivered:  # every copy is held or rejected: accept and discard
            return Answer(DISCARD)
        edits: list[tuple] = [("change", name, index, "") for name, index in reversed(self.strip)]
        auth = service.authenticator
        edits += [("change", "Authentication-Results", index, "")
                  for index in reversed(auth.forged_positions(msg.headers))]
        edits += [("add", name, value, -1) for name, value in verdict.headers]
        edits.append(("add", "X-Stronghold-Version", service.version_header(), -1))
        if verdict.auth is not None and auth.mode == "check":
            edits.append(("add", "Authentication-Results", verdict.auth.header_value(auth.authserv_id), 0))
        if verdict.subject_prefix:
            new = headers.prefixed(self.subject_raw, verdict.subject_prefix)
            if new is not None:
                if self.subject_index:
                    edits.append(("change", "Subject", self.subject_index, new))
                else:
                    edits.append(("add", "Subject", new, -1))
        edits += [("delrcpt", f"<{given}>") for d in verdict.decisions if not d.route.delivered
                  for given in self.rcpt_as_given.get(d.recipient, [d.recipient])]
        return Answer(ACCEPT, edits=edits)
