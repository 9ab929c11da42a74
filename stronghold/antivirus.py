"""Virus scanning: the Scanner interface and the clamd adapter (file descriptors, or pyclamd INSTREAM).

A scanner returns a ScanResult or raises ScannerError; it never reports
"clean" for a scan that did not happen.
"""

from __future__ import annotations

import logging
import os
import socket
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
    (INSTREAM, pyclamd).
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
                stream.seek(0)
                result = self._scan_stream(stream)  # raises ScannerError if clamd is really broken
                self.pass_descriptors = False
                log.warning("clamd at %s refused a passed file descriptor (%s); streaming from now on",
                            self.address, exc)
                return result
        return self._scan_stream(stream)

    def _scan_descriptor(self, stream: Stream) -> ScanResult:
        owned = None
        try:
            fd = stream.fileno()
        except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
            stream.seek(0)
            fd = owned = anonymous_file(stream.read())
        try:
            reply = _reply_text(_fildes_exchange(self.address[5:], fd, self.timeout or 0.0))
        except (TimeoutError, OSError) as exc:
            raise ScannerError(f"clamd at {self.address} unreachable: {exc}") from exc
        finally:
            if owned is not None:
                os.close(owned)
        # "fd[10]: OK", "fd[10]: Name FOUND", "fd[10]: why ERROR" or a bare protocol error
        if reply.endswith(" OK"):
            return ScanResult(None)
        if reply.endswith(" FOUND"):
            return ScanResult(reply.split(": ", 1)[-1][: -len(" FOUND")] or "unknown")
        raise _DescriptorRefused(reply or "no reply")

    def _scan_stream(self, stream: Stream) -> ScanResult:
        client = None
        try:
            client = self._client()
            result = client.scan_stream(stream, chunk_size=64 * 1024)
        except pyclamd.BufferTooLongError as exc:
            raise ScannerError(f"clamd refused the stream as too long: {exc}") from exc
        except (TimeoutError, pyclamd.ConnectionError, OSError) as exc:
            raise ScannerError(f"clamd at {self.address} unreachable: {exc}") from exc
        finally:
            if client is not None and getattr(client, "clamd_socket", None) is not None:
                try:
                    client.clamd_socket.close()
                except OSError:
                    pass
        if not result:
            return ScanResult(None)
        status, name = next(iter(result.values()))
        if status == "FOUND":
            return ScanResult(name or "unknown")
        raise ScannerError(f"clamd error: {name}")

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


def _fildes_exchange_py(path: str, fd: int, timeout: float, limit: int = 4096) -> bytes:
    """clamd's raw reply to FILDES for ``fd``: connect, send the command, pass the descriptor,
    read one NUL-terminated reply (or whatever came before clamd closed).  ``timeout``:
    seconds per step, 0 for none.  ``_fildes_exchange`` is this, in C when built (the GIL
    let go once instead of at every socket call)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout or None)
        sock.connect(path)
        sock.sendall(b"zFILDES\0")
        socket.send_fds(sock, [b"\0"], [fd])
        data = b""
        while not data.endswith(b"\0") and len(data) < limit:
            chunk = sock.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
    return data


def _reply_text(data: bytes) -> str:
    return data.rstrip(b"\0").decode("utf-8", "replace").strip()


_clamdcore = nativecore.load("clamdcore")
_fildes_exchange: Callable[[str, int, float], bytes] = (
    _clamdcore.fildes_exchange if _clamdcore is not None else _fildes_exchange_py)


def make_scanner(address: str, timeout: float) -> Scanner:
    return NoScanner() if address == "none" else ClamdScanner(address, timeout)
