"""Virus scanning: the Scanner interface and the clamd adapter (file descriptors, or INSTREAM).

A scanner returns a ScanResult or raises ScannerError; it never reports
"clean" for a scan that did not happen.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pyclamd

from stronghold import nativecore
from stronghold.spool import Stream, anonymous_file

log = logging.getLogger(__name__)

EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")


class ScannerError(Exception):
    """The scan could not be done (clamd down, timed out, refused the stream)."""


@dataclass(frozen=True)
class ScanResult:
    virus: str | None  # signature name, or None when clean
    scanned: bool = True  # False: no scanner is configured, nothing was looked at

    @property
    def infected(self) -> bool:
        return self.virus is not None


class Scanner(Protocol):
    def scan(self, stream: Stream) -> ScanResult: ...


class NoScanner:
    """Used when clamd_socket = none: says so in every trace."""

    name = "none"

    def scan(self, stream: Stream) -> ScanResult:
        return ScanResult(None, scanned=False)


class ClamdScanner:
    """clamd over a unix or TCP socket; a new connection per scan.

    Over a unix socket the message is handed over as a file descriptor
    (FILDES): clamd reads it in place instead of first copying a stream into a
    temporary file of its own, 20-30% less clamd CPU on corpus mail and no copy
    of a big message through the socket (``python -m bench.clamd_transport``).
    If clamd will not read a passed descriptor (a
    confinement profile, say), the scan is retried as a stream and this
    scanner streams from then on.  Over TCP the message is streamed
    (INSTREAM, our own exchange: pyclamd's took a missing or garbled reply for
    clean).  pyclamd asks clamd its version (``ping``).
    """

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout or None
        self.name = "clamd"
        self.pass_descriptors = address.startswith("unix:")

    def _client(self) -> pyclamd.pyclamd._ClamdGeneric:
        if self.address.startswith("unix:"):
            return _UnixClient(self.address[5:], self.timeout)
        host, _, port = self.address[4:].rpartition(":")
        return _NetworkClient(host.strip("[]"), int(port), self.timeout)

    def scan(self, stream: Stream) -> ScanResult:
        if self.pass_descriptors:
            try:
                return self._scan_descriptor(stream)
            except _DescriptorRefused as exc:
                return self._refused(stream, exc)
        return self._scan_stream(stream)

    def start(self, stream: Stream) -> Scanner:
        """This message's scan begun now: handed to clamd at once, its answer read by the
        returned scanner's ``scan``, so that clamd works while the caller parses and scores.
        Where that cannot be (TCP, no descriptor, streaming since a refusal) the returned
        scanner is this one, which scans when ``scan`` is called.  ``release`` it after."""
        if not self.pass_descriptors:
            return self
        try:
            fd = stream.fileno()
        except (AttributeError, OSError):
            return self
        try:
            return _Begun(self, _fildes_send(self.address[5:], fd, self.timeout or 0.0), None)
        except (TimeoutError, OSError) as exc:
            return _Begun(self, None, self._unreachable(exc))

    def _unreachable(self, exc: BaseException) -> ScannerError:
        return ScannerError(f"clamd at {self.address} unreachable: {exc}")

    def _refused(self, stream: Stream, exc: _DescriptorRefused) -> ScanResult:
        """clamd would not read a passed descriptor: stream this message and all after it."""
        stream.seek(0)
        result = self._scan_stream(stream)  # raises ScannerError if clamd is really broken
        self.pass_descriptors = False
        log.warning("clamd at %s refused a passed file descriptor (%s); streaming from now on",
                    self.address, exc)
        return result

    def _scan_descriptor(self, stream: Stream) -> ScanResult:
        owned = None
        try:
            fd = stream.fileno()
        except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
            stream.seek(0)
            fd = owned = anonymous_file(stream.read())
        try:
            reply = _fildes_reply(_fildes_send(self.address[5:], fd, self.timeout or 0.0))
        except (TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from exc
        finally:
            if owned is not None:
                os.close(owned)
        return self._answer(reply)

    @staticmethod
    def _answer(reply_bytes: bytes) -> ScanResult:
        """What a FILDES reply says; _DescriptorRefused when it is no scan result."""
        # "fd[10]: OK", "fd[10]: Name FOUND", "fd[10]: why ERROR" or a bare protocol error
        reply = reply_bytes.rstrip(b"\0").decode("utf-8", "replace").strip()
        if not reply:  # clamd closed without a word (restarting, say): no refusal, try again later
            raise ScannerError("clamd closed the connection without answering")
        if reply.endswith(" OK"):
            return ScanResult(None)
        if reply.endswith(" FOUND"):
            return ScanResult(reply.split(": ", 1)[-1][: -len(" FOUND")] or "unknown")
        raise _DescriptorRefused(reply)

    def _scan_stream(self, stream: Stream) -> ScanResult:
        """INSTREAM: the message in chunks, then clamd's one reply, read whole.  Only a scan
        result is one: pyclamd's reading took no reply at all (clamd closed, killed mid-scan),
        an empty or cut one or one it could not parse (``stream: Fo``) for clean, and raised
        IndexError on others (``UNKNOWN COMMAND``)."""
        try:
            with self._connect() as sock:
                sock.sendall(b"zINSTREAM\0")
                while chunk := stream.read(STREAM_CHUNK):
                    sock.sendall(struct.pack("!L", len(chunk)) + chunk)
                sock.sendall(struct.pack("!L", 0))
                reply = _reply_of(sock)
        except OSError as exc:  # TimeoutError too
            raise ScannerError(f"clamd at {self.address} unreachable: {exc}") from exc
        text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
        if text.endswith("size limit exceeded. ERROR"):
            raise ScannerError(f"clamd refused the stream as too long: {text}")
        if text.startswith("stream: ") and text.endswith(" OK"):
            return ScanResult(None)
        if text.startswith("stream: ") and text.endswith(" FOUND"):
            return ScanResult(text[len("stream: "):-len(" FOUND")].strip() or "unknown")
        if not text:
            raise ScannerError("clamd closed the connection without answering")
        raise ScannerError(f"clamd error: {text[:200]}")

    def _connect(self) -> socket.socket:
        """A connection to clamd, each step bounded by the timeout."""
        if self.address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address[5:])
            except BaseException:
                sock.close()
                raise
            return sock
        host, _, port = self.address[4:].rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)

    def ping(self) -> str:
        """clamd's version string; raises ScannerError."""
        try:
            return str(self._client().version())
        except (pyclamd.ConnectionError, OSError) as exc:
            raise ScannerError(f"clamd at {self.address} unreachable: {exc}") from exc


class _ClosesOnFailure:
    """pyclamd clients leave the socket of a failed connection open: close it."""

    clamd_socket: socket.socket

    def _init_socket(self) -> None:
        try:
            super()._init_socket()  # type: ignore[misc]
        except pyclamd.ConnectionError:
            self.clamd_socket.close()
            raise


class _UnixClient(_ClosesOnFailure, pyclamd.ClamdUnixSocket):
    """pyclamd's client without the probe connection its constructor makes (every
    command connects anyway)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        pyclamd.pyclamd._ClamdGeneric.__init__(self)
        self.unix_socket, self.timeout = path, timeout


class _NetworkClient(_ClosesOnFailure, pyclamd.ClamdNetworkSocket):
    """As _UnixClient, over TCP."""

    def __init__(self, host: str, port: int, timeout: float | None) -> None:
        pyclamd.pyclamd._ClamdGeneric.__init__(self)
        self.host, self.port, self.timeout = host, port, timeout


class _DescriptorRefused(ScannerError):
    """clamd answered a FILDES scan with an error."""


class _Begun:
    """A FILDES scan clamd has already been handed (``ClamdScanner.start``): ``scan`` reads its
    answer (once; a second call scans again), ``close`` lets it go unread."""

    name = "clamd"

    def __init__(self, scanner: ClamdScanner, sock: int | None, error: ScannerError | None) -> None:
        self.scanner = scanner
        self.sock = sock
        self.error = error

    def scan(self, stream: Stream) -> ScanResult:
        sock, self.sock = self.sock, None
        if self.error is not None:
            raise self.error
        if sock is None:
            return self.scanner.scan(stream)
        try:
            reply = _fildes_reply(sock)
        except (TimeoutError, OSError) as exc:
            raise self.scanner._unreachable(exc) from exc
        try:
            return self.scanner._answer(reply)
        except _DescriptorRefused as exc:
            return self.scanner._refused(stream, exc)

    def close(self) -> None:
        if self.sock is not None:
            os.close(self.sock)
            self.sock = None


def start(scanner: Scanner, stream: Stream) -> Scanner:
    """``scanner`` with this message's scan begun where it can begin early (see
    ``ClamdScanner.start``); otherwise ``scanner`` itself."""
    begin = getattr(scanner, "start", None)
    return begin(stream) if begin is not None else scanner


def release(scanner: Scanner) -> None:
    """Let go of a scan begun by ``start`` and never read (a no-op for one that was, and for
    a scanner ``start`` returned as it was)."""
    if isinstance(scanner, _Begun):
        scanner.close()


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, max(int((seconds - whole) * 1_000_000), 0 if whole else 1))


def _fildes_send_py(path: str, fd: int, timeout: float) -> int:
    """Connect to clamd, send FILDES and pass ``fd``; the connected socket's descriptor, for
    ``_fildes_reply_py``.  ``timeout``: seconds per step (kept for the reply), 0 for none.
    ``_fildes_send`` is this, in C when built (the GIL let go once, not at every call)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if timeout > 0:  # in the kernel, so that the descriptor alone carries them to the reply
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        sock.connect(path)
        sock.sendall(b"zFILDES\0")
        socket.send_fds(sock, [b"\0"], [fd])
    except BlockingIOError as exc:  # a step ran out of time
        sock.close()
        raise TimeoutError("timed out") from exc
    except BaseException:
        sock.close()
        raise
    return sock.detach()


def _fildes_reply_py(sock: int, limit: int = 4096) -> bytes:
    """clamd's raw reply on a socket from ``_fildes_send_py``: one NUL-terminated reply, or
    whatever came before clamd closed; the socket is closed.  ``_fildes_reply`` is this, in
    C when built."""
    with socket.socket(fileno=sock) as conn:
        data = b""
        try:
            while not data.endswith(b"\0") and len(data) < limit:
                chunk = conn.recv(limit - len(data))
                if not chunk:
                    break
                data += chunk
        except BlockingIOError as exc:
            raise TimeoutError("timed out") from exc
    return data


STREAM_CHUNK = 64 * 1024


def _reply_of(sock: socket.socket, limit: int = 4096) -> bytes:
    """clamd's reply to a streamed scan: up to its NUL, or what came before it closed."""
    data = b""
    while not data.endswith(b"\0") and len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


_clamdcore = nativecore.load("clamdcore")
_fildes_send: Callable[[str, int, float], int] = (
    _clamdcore.fildes_send if _clamdcore is not None else _fildes_send_py)
_fildes_reply: Callable[[int], bytes] = _clamdcore.fildes_reply if _clamdcore is not None else _fildes_reply_py


def make_scanner(address: str, timeout: float) -> Scanner:
    return NoScanner() if address == "none" else ClamdScanner(address, timeout)
