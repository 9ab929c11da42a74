"""Virus scanning: the Scanner interface and the clamd adapter (pyclamd, INSTREAM).

A scanner returns a ScanResult or raises ScannerError; it never reports
"clean" for a scan that did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyclamd

EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")


class ScannerError(Exception):
    """The scan could not be done (clamd down, timed out, refused the stream)."""


@dataclass(frozen=True)
class ScanResult:
    virus: str | None  # signature name, or None when clean

    @property
    def infected(self) -> bool:
        return self.virus is not None


class Scanner(Protocol):
    def scan(self, stream: BinaryIO) -> ScanResult: ...


class NoScanner:
    """Used when clamd_socket = none: says so in every trace."""

    name = "none"

    def scan(self, stream: BinaryIO) -> ScanResult:
        return ScanResult(None)


class ClamdScanner:
    """clamd over a unix or TCP socket; a new connection per scan."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout or None
        self.name = "clamd"

    def _client(self) -> pyclamd.pyclamd._ClamdGeneric:
        if self.address.startswith("unix:"):
            return pyclamd.ClamdUnixSocket(self.address[5:], timeout=self.timeout)
        host, _, port = self.address[4:].rpartition(":")
        return pyclamd.ClamdNetworkSocket(host.strip("[]"), int(port), timeout=self.timeout)

    def scan(self, stream: BinaryIO) -> ScanResult:
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


def make_scanner(address: str, timeout: float) -> Scanner:
    return NoScanner() if address == "none" else ClamdScanner(address, timeout)
