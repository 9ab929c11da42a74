"""The MTA's side of the milter protocol (version 6), for driving a milter over a socket in tests.

``Mta`` packs the commands Postfix sends (negotiation, macros, connect, HELO, MAIL, RCPT,
DATA, headers, body, end of message, abort, quit) and reads the milter's replies; every read
has a timeout, so a milter that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import struct

LEN = struct.Struct(">I")
ADDHDRS, CHGHDRS, DELRCPT = 0x01, 0x10, 0x08
ALL_ACTIONS = 0x1FF  # every action of version 6 allowed
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT, P_NR_DATA = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
P_NR_UNKN, P_NR_EOH, P_NR_BODY, P_NR_HDR = 0x20000, 0x40000, 0x80000, 0x80
P_NOEOH, P_NOUNKNOWN = 0x40, 0x100
ALL_STEPS = 0x1FFFFF  # every protocol flag of version 6 offered
NO_REPLY_BITS = (P_NR_CONN | P_NR_HELO | P_NR_MAIL | P_NR_RCPT | P_NR_DATA | P_NR_UNKN | P_NR_EOH | P_NR_BODY
                 | P_NR_HDR)


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    """One protocol packet: length (command byte included), command, data."""
    return LEN.pack(len(data) + 1) + cmd + data


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _z(*fields: str | bytes) -> bytes:
    """NUL-terminated strings, one after another."""
    return b"".join(_b(f) + b"\0" for f in fields)


class Mta:
    """One MTA connection to a milter, over ``sock``; ``sent`` collects what was written
    since the last ``flush`` when ``buffered``, else each command goes out at once."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0, buffered: bool = False) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffered = buffered
        self.pending = bytearray()
        self.agreed = 0  # the protocol steps the milter agreed to (read_negotiation)

    # -- writing ---------------------------------------------------------------------------
    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.raw(packet(cmd, data))

    def raw(self, data: bytes) -> None:
        """Bytes as they are (a hostile or broken MTA)."""
        if self.buffered:
            self.pending += data
        else:
            self.sock.sendall(data)

    def flush(self) -> None:
        self.sock.sendall(bytes(self.pending))
        self.pending.clear()

    def negotiate(self, version: int = 6, actions: int = ALL_ACTIONS, protocol: int = ALL_STEPS) -> None:
        self.send(b"O", struct.pack(">III", version, actions, protocol))

    def macro(self, stage: bytes, pairs: dict[str, str]) -> None:
        self.send(b"D", stage + b"".join(_z(k, v) for k, v in pairs.items()))

    def connect(self, hostname: str, family: bytes = b"4", address: str = "192.0.2.1", port: int = 25) -> None:
        """The connect command as Postfix sends it: no port nor address for the unknown family 'U',
        a port (0 for a unix socket, 'L') before the address for the others."""
        data = _z(hostname) + family
        if family != b"U":
            data += struct.pack(">H", port) + _z(address)
        self.send(b"C", data)

    def helo(self, name: str) -> None:
        self.send(b"H", _z(name))

    def mail(self, *args: str | bytes) -> None:
        self.send(b"M", _z(*args))

    def rcpt(self, *args: str | bytes) -> None:
        self.send(b"R", _z(*args))

    def data(self) -> None:
        self.send(b"T")

    def header(self, name: str | bytes, value: str | bytes) -> None:
        self.send(b"L", _z(name, value))

    def eoh(self) -> None:
        self.send(b"N")

    def body(self, chunk: bytes) -> None:
        self.send(b"B", chunk)

    def eom(self, chunk: bytes = b"") -> None:
        self.send(b"E", chunk)

    def abort(self) -> None:
        self.send(b"A")

    def quit(self) -> None:
        self.send(b"Q")

    def quit_nc(self) -> None:
        self.send(b"K")

    def unknown(self, line: str) -> None:
        self.send(b"U", _z(line))

    # -- reading ---------------------------------------------------------------------------
    def _exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise EOFError(f"milter closed the connection ({len(out)} of {n} bytes read)")
            out += got
        return bytes(out)

    def read(self) -> tuple[bytes, bytes]:
        """The next reply packet: (command byte, data); socket.timeout when none comes."""
        (length,) = LEN.unpack(self._exactly(4))
        body = self._exactly(length)
        return body[:1], body[1:]

    def read_negotiation(self) -> tuple[int, int, int]:
        """The milter's answer to ``negotiate``: (version, actions, protocol)."""
        cmd, data = self.read()
        assert cmd == b"O", (cmd, data)
        version, actions, protocol = struct.unpack(">III", data)
        self.agreed = protocol
        return version, actions, protocol

    def read_until_final(self) -> tuple[list[tuple[bytes, bytes]], tuple[bytes, bytes]]:
        """End of message: the modifications (h, i, m, -, +, ...) and then the final reply."""
        edits: list[tuple[bytes, bytes]] = []
        while True:
            cmd, data = self.read()
            if cmd in (b"a", b"c", b"d", b"r", b"t", b"y"):
                return edits, (cmd, data)
            edits.append((cmd, data))

    def nothing_pending(self, wait: float = 0.05) -> bool:
        """No reply (nor end of file) comes within ``wait`` seconds."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(previous)
        return False  # a reply, or the milter closed the connection


def fields(data: bytes) -> list[str]:
    """The NUL-terminated strings of a reply's data."""
    return [f.decode("utf-8", "surrogateescape") for f in data.split(b"\0")[:-1]]
