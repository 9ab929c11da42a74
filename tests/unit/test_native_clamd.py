"""The message handed to clamd, in C: the memfd holding it (``_clamdcore.anonymous_file``,
against ``spool._anonymous_file_py``) and clamd's FILDES exchange in two halves
(``_clamdcore.fildes_send`` / ``fildes_reply``, against ``antivirus._fildes_send_py`` /
``_fildes_reply_py``), both talking to stand-in daemons on a unix socket that record what
arrives: the command, the passed descriptor (read back: the same file), replies in pieces,
silence, a close, a reply without its NUL.  tests/unit/test_antivirus.py runs both against
the real clamd."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stronghold import _clamdcore, antivirus, spool  # type: ignore[attr-defined]
from stronghold.spool import anonymous_file
from tests.harness.unixdaemon import UnixDaemon, read_command

HALVES: dict[str, tuple[Callable[[str, int, float], int], Callable[[int], bytes]]] = {
    "c": (_clamdcore.fildes_send, _clamdcore.fildes_reply),
    "python": (antivirus._fildes_send_py, antivirus._fildes_reply_py)}


class StandIn(UnixDaemon):
    """Reads the command up to its NUL and the descriptor passed with one byte, records both,
    then does what ``answer`` says with the connection."""

    def __init__(self, path: Path, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.seen: list[tuple[bytes, bytes, bytes]] = []  # command, byte with the descriptor, file content
        super().__init__(path, self._request, backlog=4)

    def _request(self, conn: socket.socket) -> None:
        command = read_command(conn)
        byte, fds, _flags, _addr = socket.recv_fds(conn, 16, 1)
        content = b""
        for fd in fds:
            content = os.pread(fd, 1 << 16, 0)
            os.close(fd)
        self.seen.append((command, byte, content))
        self.answer(conn)


@pytest.fixture(params=sorted(HALVES))
def halves(request: pytest.FixtureRequest) -> tuple[Callable[[str, int, float], int], Callable[[int], bytes]]:
    return HALVES[request.param]


@pytest.fixture
def exchange(halves) -> Callable[[str, int, float], bytes]:
    """Both halves one after the other, as a scan that was not begun early."""
    send, reply = halves
    return lambda path, fd, timeout: reply(send(path, fd, timeout))


@pytest.fixture
def message() -> Iterator[int]:
    fd = anonymous_file(b"From: a@example.com\r\n\r\nhello\r\n")
    os.lseek(fd, 5, os.SEEK_SET)  # wherever it stands, the daemon reads the file itself
    yield fd
    os.close(fd)


def _stand_in(tmp_path: Path, answer: Callable[[socket.socket], None]) -> Iterator[StandIn]:
    daemon = StandIn(tmp_path / "clamd.sock", answer)
    yield daemon
    daemon.close()


def test_the_command_and_the_descriptor_arrive_and_a_reply_in_pieces_is_read_whole(tmp_path, exchange, message):
    def answer(conn: socket.socket) -> None:
        for piece in (b"fd[7]: Stronghold.", b"Test FO", b"UND\0"):
            conn.sendall(piece)
            time.sleep(0.01)
    for daemon in _stand_in(tmp_path, answer):
        assert exchange(str(daemon.path), message, 5.0) == b"fd[7]: Stronghold.Test FOUND\0"
        assert daemon.seen == [(b"zFILDES\0", b"\0", b"From: a@example.com\r\n\r\nhello\r\n")]


def test_a_silent_daemon_times_out_after_the_timeout(tmp_path, exchange, message):
    release = threading.Event()
    for daemon in _stand_in(tmp_path, lambda conn: release.wait(10)):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            exchange(str(daemon.path), message, 0.4)
        assert 0.3 < time.monotonic() - started < 3
        release.set()


def test_a_daemon_that_closes_gives_what_came_before(tmp_path, exchange, message):
    for daemon in _stand_in(tmp_path, lambda conn: conn.sendall(b"PROTOCOL ERROR")):
        assert exchange(str(daemon.path), message, 5.0) == b"PROTOCOL ERROR"
    (tmp_path / "clamd.sock").unlink()
    for daemon in _stand_in(tmp_path, lambda conn: None):
        assert exchange(str(daemon.path), message, 5.0) == b""


def test_a_reply_is_read_up_to_4096_bytes(tmp_path, exchange, message):
    for daemon in _stand_in(tmp_path, lambda conn: conn.sendall(b"x" * 10_000)):
        assert exchange(str(daemon.path), message, 5.0) == b"x" * 4096


def test_no_daemon_is_an_os_error(tmp_path, exchange, message):
    for path in (str(tmp_path / "nothing.sock"), str(tmp_path / ("x" * 200)), ""):
        with pytest.raises(OSError):
            exchange(path, message, 1.0)
    listening_nowhere = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(listening_nowhere))  # bound, not listening: what a dead clamd leaves
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        exchange(str(listening_nowhere), message, 1.0)


@pytest.mark.parametrize("data", [b"", b"From: a@example.com\r\n\r\nhello\r\n", bytearray(b"x" * 3_000_001),
                                  memoryview(b"0123456789")[2:7]])
def test_anonymous_file_holds_the_data_at_position_0_and_closes_on_exec(data):
    for make in (_clamdcore.anonymous_file, spool._anonymous_file_py, spool.anonymous_file):
        fd = make(data)
        try:
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0
            assert os.fstat(fd).st_size == len(data)
            assert os.pread(fd, len(data) + 1, 0) == bytes(data)
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            os.close(fd)


def test_anonymous_file_takes_only_bytes_like_data():
    with pytest.raises(TypeError):
        _clamdcore.anonymous_file("text")


def test_the_request_is_with_the_daemon_before_the_reply_is_asked(tmp_path, halves, message):
    send, reply = halves
    answered = threading.Event()
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"fd[3]: OK\0")
        answered.set()
    for daemon in _stand_in(tmp_path, answer):
        sock = send(str(daemon.path), message, 5.0)
        assert answered.wait(5)  # the daemon had it all and answered: nobody has read yet
        assert daemon.seen == [(b"zFILDES\0", b"\0", b"From: a@example.com\r\n\r\nhello\r\n")]
        assert reply(sock) == b"fd[3]: OK\0"
        with pytest.raises(OSError):
            os.fstat(sock)  # the reply closed the socket


def test_no_daemon_fails_the_send_and_leaves_no_descriptor_open(tmp_path, halves, message):
    send, _reply = halves
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(OSError):
            send(str(tmp_path / "nothing.sock"), message, 1.0)
    # a descriptor left per failed send would be 20 more; other threads of the test process
    # (session fixtures' servers, collected sockets) may open or close one meanwhile
    assert len(os.listdir("/proc/self/fd")) - before < 5
