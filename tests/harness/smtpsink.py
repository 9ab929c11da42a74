"""An SMTP server that keeps what it receives (aiosmtpd): where Postfix relays in tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

SIZE_LIMIT = 100 * 1024 * 1024  # more than any test sends (the filter's own limit is 25 MiB)


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


class _LongLines(SMTP):
    # RFC 5321 allows 1000 octets a line; Postfix relays up to its line_length_limit (2048) and
    # the hostile-input tests send longer ones: keep them as they come.
    line_length_limit = 1 << 20


class _Controller(Controller):
    """aiosmtpd's threaded controller on a socket bound before it starts (port 0: the system
    picks a free port, no race with other tests)."""

    def __init__(self, handler: Any) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1],
                         server_hostname="sink", data_size_limit=SIZE_LIMIT)

    def factory(self) -> SMTP:
        return _LongLines(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class SmtpSink:
    """Listens on 127.0.0.1:``port`` from construction until ``close``; ``messages`` in arrival
    order, recipients lower-cased."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._controller = _Controller(self)
        self.port: int = self._controller.port
        self._controller.start()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.add(Received(envelope.mail_from or "", [r.lower() for r in envelope.rcpt_tos], content))
        return "250 queued"

    def add(self, item: Received) -> None:
        with self._cond:
            self.messages.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 20.0) -> list[Received]:
        """Messages matching ``predicate``, waiting until at least one arrives."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)

    def close(self) -> None:
        self._controller.stop()

