"""A minimal SMTP server that keeps what it receives: where Postfix relays in tests."""

from __future__ import annotations

import socketserver
import threading
import time
from dataclasses import dataclass


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


class _Handler(socketserver.StreamRequestHandler):
    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        sink: SmtpSink = self.server.sink  # type: ignore[attr-defined]
        self._reply("220 sink ESMTP")
        sender, rcpts = "", []
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            cmd = line.decode("latin-1").strip()
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250-sink\r\n250-8BITMIME\r\n250 SIZE 104857600")
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].split()[0].strip("<>"), []
                self._reply("250 ok")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].split()[0].strip("<>").lower())
                self._reply("250 ok")
            elif verb == "DATA":
                self._reply("354 go")
                chunks = []
                while True:
                    chunk = self.rfile.readline(1 << 20)
                    if not chunk or chunk in (b".\r\n", b".\n"):
                        break
                    chunks.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                sink.add(Received(sender, rcpts, b"".join(chunks)))
                self._reply("250 queued")
            elif verb == "RSET":
                sender, rcpts = "", []
                self._reply("250 ok")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("250 ok")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.sink = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, item: Received) -> None:
        with self._cond:
            self.messages.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[Received]:
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
        self.server.shutdown()
        self.server.server_close()
