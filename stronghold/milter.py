"""pymilter adapter: libmilter's protocol events -> Transaction -> milter replies.  No policy here.

One ``StrongholdMilter`` per SMTP connection.  A ``Transaction`` (stronghold/transaction.py)
is started at MAIL FROM and dropped on abort; the message is spooled as it arrives (memory
up to ``spool_memory_bytes``) and parsed once at end of message, where the Transaction's
``Answer`` becomes libmilter calls.  The other engine, stronghold/nativemilter.py, speaks
the protocol in C and feeds the same Transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import Milter

from stronghold.service import Service
from stronghold.transaction import ACCEPT, DISCARD, REJECT, Answer, Transaction, bare, check_recipient
from stronghold.verdict import Envelope

FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT
_RESULT = {ACCEPT: Milter.ACCEPT, REJECT: Milter.REJECT, DISCARD: Milter.DISCARD}


def factory(service: Service) -> Callable[[], StrongholdMilter]:
    """pymilter's ``Milter.factory``: one ``StrongholdMilter`` per connection, each given ``service``."""
    def connection() -> StrongholdMilter:
        return StrongholdMilter(service)
    return connection


class StrongholdMilter(Milter.Base):
    """Callbacks that never refuse are ``@noreply``: where Postfix agrees, it does
    not wait for an answer to each header and body chunk (fewer round trips)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.client_ip = ""
        self.helo = ""
        self.txn: Transaction | None = None
        self.in_body = False  # the blank line after the headers is spooled

    def _reset(self) -> None:
        if self.txn is not None:
            self.txn.close()
        self.txn = None
        self.in_body = False

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
        self.txn = Transaction(self.service, mailfrom)
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        given = bare(to)
        sender = self.txn.sender if self.txn is not None else ""
        refused = check_recipient(self.service, sender, given, self.client_ip, self.helo,
                                  self.getsymval("i") or "")
        if refused is not None:
            return self._answer(refused)
        if self.txn is not None:
            self.txn.add_recipient(given)
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
        txn = self.txn
        if txn is not None:
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
            start = txn.spool.size
            self._write(name.encode("ascii", "replace") + b": " + raw + b"\r\n")
            txn.note_header(name, raw, start, txn.spool.size)
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
        txn = self.txn
        if txn is None:
            return
        txn.size += len(data)
        room = self.service.cfg.max_message_bytes - txn.spool.size
        if room <= 0 or len(data) > room:
            txn.oversize = True
            data = data[:max(room, 0)]
        if data:
            txn.write(data)

    # -- decision ---------------------------------------------------------------
    def eom(self) -> int:
        txn = self.txn
        if txn is None:  # no MAIL FROM seen: nothing to decide about
            return Milter.TEMPFAIL
        if not self.in_body:  # a message without a body
            self._end_headers()
        env = Envelope(txn.sender, tuple(txn.recipients), self.client_ip, self.helo,
                       self.getsymval("i") or "")
        answer = txn.conclude(env)
        for edit in answer.edits:
            if edit[0] == "change":
                self.chgheader(edit[1], edit[2], edit[3])
            elif edit[0] == "add":
                self.addheader(edit[1], edit[2], edit[3])
            else:
                self.delrcpt(edit[1])
        return self._answer(answer)

    def _answer(self, answer: Answer) -> int:
        if answer.reply is not None:
            self.setreply(*answer.reply)
        return _RESULT.get(answer.action, Milter.TEMPFAIL)

    def abort(self) -> int:
        self._reset()
        return Milter.CONTINUE

    def close(self) -> int:
        self._reset()
        return Milter.CONTINUE
