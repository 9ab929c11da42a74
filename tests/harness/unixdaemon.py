"""A stand-in daemon on a unix socket: accepts one connection at a time in a thread of its own
and hands each to ``handle`` (what clamd would do with it, or what a broken one does)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path


class UnixDaemon:
    def __init__(self, path: Path, handle: Callable[[socket.socket], None], backlog: int = 8) -> None:
        self.path = path
        self.handle = handle
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(backlog)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                self.handle(conn)

    def close(self) -> None:
        self.sock.close()


def read_command(conn: socket.socket, ends: tuple[bytes, ...] = (b"\0",)) -> bytes:
    """A clamd command, byte by byte up to its terminator (so nothing after it is read)."""
    command = b""
    while not command.endswith(ends):
        byte = conn.recv(1)
        if not byte:
            break
        command += byte
    return command
