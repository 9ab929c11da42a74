"""The clamd adapter against the real clamd (our own signatures), over both transports.

One test uses a stand-in clamd beside the real one: a daemon that refuses
passed descriptors, which a real clamd only does under a confinement profile.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import TEST_SIGNATURES, Clamd, free_port
from stronghold import antivirus
from stronghold.antivirus import EICAR, ClamdScanner, ScannerError
from stronghold.spool import Spool
from tests.conftest import shared_tmpdir
from tests.harness.unixdaemon import UnixDaemon, read_command

pytestmark = pytest.mark.clamd

CLEAN = b"From: a@example.com\r\nSubject: hello\r\n\r\nnothing to see\r\n"
INFECTED = b"From: a@example.com\r\nSubject: hello\r\n\r\n" + EICAR + b"\r\n"
EICAR_NAME = "Stronghold.Test.EICAR.UNOFFICIAL"


@pytest.fixture(scope="module")
def clamd_both() -> Iterator[Clamd]:
    """clamd listening on a unix socket and on TCP loopback."""
    home = shared_tmpdir("stronghold-clamd-tcp-")
    daemon = Clamd(home, TEST_SIGNATURES, tcp_port=free_port())
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(home, ignore_errors=True)


def _spool(data: bytes, limit: int, folder: Path) -> Spool:
    spool = Spool(limit, folder)
    spool.write(data)
    return spool


@pytest.fixture(params=["native", "python"])
def exchange(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The FILDES exchange in C (the default where built) or its Python reference."""
    if request.param == "python":
        monkeypatch.setattr(antivirus, "_fildes_send", antivirus._fildes_send_py)
        monkeypatch.setattr(antivirus, "_fildes_reply", antivirus._fildes_reply_py)
    else:
        assert antivirus._fildes_send is not antivirus._fildes_send_py, "native core not built"
    return str(request.param)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("holder", ["bytesio", "spool-memory", "spool-disk"])
def test_scan_finds_eicar_and_passes_clean_mail(clamd_both, tmp_path, transport, holder, exchange):
    address = clamd_both.address if transport == "unix" else clamd_both.tcp_address
    scanner = ClamdScanner(address, timeout=10)
    assert scanner.pass_descriptors is (transport == "unix")
    for data, expected in ((INFECTED, EICAR_NAME), (CLEAN, None)):
        if holder == "bytesio":
            stream = io.BytesIO(data)
        else:
            stream = _spool(data, 1 << 20 if holder == "spool-memory" else 16, tmp_path)
        with stream:
            assert scanner.scan(stream).virus == expected
    assert scanner.pass_descriptors is (transport == "unix")  # no fallback happened


def test_descriptor_scan_reads_the_whole_spool_whatever_its_position(clamd_both, tmp_path, exchange):
    with _spool(INFECTED, 1 << 20, tmp_path) as spool:
        spool.read()  # position at the end: clamd must still see it all
        assert ClamdScanner(clamd_both.address).scan(spool).infected


def test_unreachable_clamd_is_an_error_not_clean(tmp_path, exchange):
    for address in (f"unix:{tmp_path / 'nothing.sock'}", f"tcp:127.0.0.1:{free_port()}"):
        with pytest.raises(ScannerError, match="unreachable"):
            ClamdScanner(address, timeout=2).scan(io.BytesIO(INFECTED))


def test_a_clamd_that_never_answers_is_an_error_after_the_timeout(tmp_path, exchange):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(4)  # connections wait in the backlog: nobody reads, nobody answers
    raised: list[BaseException] = []

    def scan() -> None:
        try:
            ClamdScanner(f"unix:{tmp_path / 'silent.sock'}", timeout=0.5).scan(io.BytesIO(CLEAN))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)
    try:
        worker = threading.Thread(target=scan, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the scan waits on a silent clamd for good"
    finally:
        silent.close()
    assert len(raised) == 1 and isinstance(raised[0], ScannerError) and "unreachable" in str(raised[0])


class RefusingClamd(UnixDaemon):
    """Answers FILDES with a protocol error and scans INSTREAM by looking for EICAR."""

    def __init__(self, path: Path) -> None:
        self.commands: list[bytes] = []
        super().__init__(path, self._request)

    def _request(self, conn: socket.socket) -> None:
        command = read_command(conn, (b"\0", b"\n"))
        self.commands.append(command)
        if command.startswith(b"zFILDES"):
            conn.recv(16)
            conn.sendall(b"PROTOCOL ERROR: ancillary data refused. ERROR\0")
            return
        data = b""
        while True:
            (size,) = struct.unpack("!L", _exactly(conn, 4))
            if not size:
                break
            data += _exactly(conn, size)
        end = command[-1:]  # clamd ends its reply as the command ended: NUL or newline
        conn.sendall((b"stream: Eicar FOUND" if EICAR in data else b"stream: OK") + end)


def _exactly(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def test_refused_descriptor_falls_back_to_streaming_for_good(tmp_path, caplog, exchange):
    fake = RefusingClamd(tmp_path / "clamd.sock")
    try:
        scanner = ClamdScanner(f"unix:{fake.path}", timeout=5)
        with _spool(INFECTED, 1 << 20, tmp_path) as spool:
            assert scanner.scan(spool).virus == "Eicar"
        assert not scanner.pass_descriptors
        assert "streaming from now on" in caplog.text
        assert scanner.scan(io.BytesIO(CLEAN)).virus is None
        names = [c.strip(b"\0\n")[1:] for c in fake.commands]
        assert names == [b"FILDES", b"INSTREAM", b"INSTREAM"]  # one refusal, then streams only
    finally:
        fake.close()


@pytest.mark.parametrize("early", [False, True])
def test_a_scan_begun_early_answers_as_a_scan(clamd_both, tmp_path, exchange, early):
    """``start`` hands the message over at once; its ``scan`` reads the same answer ``scan`` gets."""
    scanner = ClamdScanner(clamd_both.address, timeout=10)
    for data, expected in ((INFECTED, EICAR_NAME), (CLEAN, None)):
        with _spool(data, 1 << 20, tmp_path) as spool:
            begun = antivirus.start(scanner, spool) if early else scanner
            try:
                assert (begun is not scanner) == early
                assert begun.scan(spool).virus == expected
            finally:
                antivirus.release(begun)


def test_a_begun_scan_of_a_clamd_that_is_down_fails_when_read(tmp_path, exchange):
    scanner = ClamdScanner(f"unix:{tmp_path / 'nothing.sock'}", timeout=2)
    with _spool(CLEAN, 1 << 20, tmp_path) as spool:
        begun = antivirus.start(scanner, spool)  # no error yet: where scan() would fail, it fails
        with pytest.raises(ScannerError, match="unreachable"):
            begun.scan(spool)


def test_a_begun_scan_let_go_unread_closes_its_connection(clamd_both, tmp_path, exchange):
    scanner = ClamdScanner(clamd_both.address, timeout=10)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        with _spool(CLEAN, 1 << 20, tmp_path) as spool:
            antivirus.release(antivirus.start(scanner, spool))
    assert len(os.listdir("/proc/self/fd")) == before
    assert scanner.scan(io.BytesIO(INFECTED)).virus == EICAR_NAME  # clamd none the worse


def test_over_tcp_or_without_a_descriptor_nothing_begins_early(clamd_both, tmp_path):
    over_tcp = ClamdScanner(clamd_both.tcp_address, timeout=10)
    assert antivirus.start(over_tcp, io.BytesIO(CLEAN)) is over_tcp
    unix = ClamdScanner(clamd_both.address, timeout=10)
    assert antivirus.start(unix, io.BytesIO(CLEAN)) is unix  # a BytesIO has no descriptor
    assert antivirus.start(antivirus.NoScanner(), io.BytesIO(CLEAN)).scan(io.BytesIO(CLEAN)).scanned is False


def test_a_begun_scan_refused_falls_back_to_streaming(tmp_path, caplog, exchange):
    fake = RefusingClamd(tmp_path / "clamd.sock")
    try:
        scanner = ClamdScanner(f"unix:{fake.path}", timeout=5)
        with _spool(INFECTED, 1 << 20, tmp_path) as spool:
            assert antivirus.start(scanner, spool).scan(spool).virus == "Eicar"
        assert not scanner.pass_descriptors and "streaming from now on" in caplog.text
    finally:
        fake.close()


def test_a_clamd_that_closes_without_answering_is_an_error_not_a_refusal(tmp_path, exchange):
    """An empty reply (clamd restarting mid-scan, say) fails this scan (tempfail, the MTA
    retries); it does not switch the worker to streaming for good."""
    def hang_up(conn: socket.socket) -> None:
        read_command(conn)
        socket.recv_fds(conn, 16, 1)
    daemon = UnixDaemon(tmp_path / "clamd.sock", hang_up)
    try:
        scanner = ClamdScanner(f"unix:{daemon.path}", timeout=5)
        with _spool(CLEAN, 1 << 20, tmp_path) as spool:
            for begun in (scanner, antivirus.start(scanner, spool)):
                with pytest.raises(ScannerError, match="without answering"):
                    begun.scan(spool)
        assert scanner.pass_descriptors
    finally:
        daemon.close()


@pytest.mark.parametrize("reply", [None, b"", b"stream: Stronghold.Te", b"stream: weird", b"UNKNOWN COMMAND",
                                   b"COMMAND READ TIMED OUT"])
def test_a_streamed_scan_without_a_scan_result_is_an_error_not_clean(tmp_path, reply):
    """INSTREAM (over TCP, or after a refused descriptor) answered by a clamd that hangs up
    (killed mid-scan: None), or with an empty, cut or unknown reply: pyclamd's reading called the
    first four clean (the message delivered unscanned) and raised IndexError on the others."""
    def reading(conn: socket.socket) -> None:
        command = read_command(conn, (b"\0", b"\n"))
        if command.startswith(b"zFILDES"):
            socket.recv_fds(conn, 16, 1)
            conn.sendall(b"PROTOCOL ERROR: ancillary data refused. ERROR\0")
            return
        while size := struct.unpack("!L", _exactly(conn, 4))[0]:
            _exactly(conn, size)
        if reply is not None:
            conn.sendall(reply + command[-1:])  # ended as the command was, as clamd does
    daemon = UnixDaemon(tmp_path / "clamd.sock", reading)
    try:
        scanner = ClamdScanner(f"unix:{daemon.path}", timeout=5)
        with pytest.raises(ScannerError):
            scanner.scan(io.BytesIO(INFECTED))
        assert scanner.pass_descriptors  # the fallback did not work: nothing switched for good
    finally:
        daemon.close()
