"""The milter's unix socket: a second milter on it is refused, and a milter removes only its own socket."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from devtools.localstack import _unix_connects
from stronghold.milter_server import _open_socket, _socket_identity, remove_own_socket
from tests.harness.milterproc import MilterProcess, write_config


def _settings(home: Path) -> dict[str, object]:
    return {"data_dir": str(home / "data"), "models_dir": str(home / "models"), "clamd_socket": "none",
            "milter_socket": f"unix:{home / 'milter.sock'}", "database_url": f"sqlite:///{home / 'store.db'}",
            "milter_workers": 1}


def test_a_second_milter_on_a_live_socket_is_refused_and_the_first_keeps_it(tmp_path: Path) -> None:
    first = MilterProcess(tmp_path, _settings(tmp_path))
    first.start()
    try:
        config = write_config(tmp_path / "second.toml", _settings(tmp_path))
        second = subprocess.Popen([sys.executable, "-m", "stronghold.cli", "--config", str(config), "milter"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _out, err = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it started serving: stop it and its workers, then fail
            os.killpg(second.pid, signal.SIGKILL)
            second.communicate()
            raise
        assert second.returncode == 2
        assert "another milter is listening on" in err
        assert _unix_connects(tmp_path / "milter.sock")  # still the first one's, still answering
    finally:
        first.stop()
    assert not (tmp_path / "milter.sock").exists()  # its own socket: removed at stop


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock_path = tmp_path / "milter.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))  # bound, never listening: what a crashed milter leaves
    stale.close()
    milter = MilterProcess(tmp_path, _settings(tmp_path))
    milter.start()
    try:
        assert _unix_connects(sock_path)
    finally:
        milter.stop()
    assert not sock_path.exists()


def test_a_stop_removes_only_its_own_socket(tmp_path: Path) -> None:
    """Another milter's socket at the same path (it started after us) is left alone."""
    path = tmp_path / "milter.sock"
    ours = socket.socket(socket.AF_UNIX)
    ours.bind(str(path))
    identity = _socket_identity(path)
    assert identity is not None
    path.unlink()
    theirs = socket.socket(socket.AF_UNIX)
    try:
        theirs.bind(str(path))
        assert not remove_own_socket(path, identity) and path.exists()
    finally:
        theirs.close()
        ours.close()
    path.unlink()
    ours = socket.socket(socket.AF_UNIX)
    try:
        ours.bind(str(path))
        assert remove_own_socket(path, _socket_identity(path)) and not path.exists()  # type: ignore[arg-type]
    finally:
        ours.close()


def test_a_stop_as_soon_as_the_socket_answers_removes_it(tmp_path: Path) -> None:
    """systemd may stop the milter the moment it is up: the supervisor must already handle
    SIGTERM then (the default action would kill it and leave the socket behind)."""
    sock_path = tmp_path / "milter.sock"
    config = write_config(tmp_path / "milter.toml", _settings(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "stronghold.cli", "--config", str(config), "milter"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _unix_connects(sock_path):
            assert proc.poll() is None and time.monotonic() < deadline, "the milter never listened"
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert not sock_path.exists()


def test_the_socket_is_born_private_whatever_the_umask(tmp_path: Path) -> None:
    """The file exists from bind() on and is opened to the MTA's group only after: until then
    nobody else may connect, even under a umask that would let everyone."""
    path = tmp_path / "milter.sock"
    previous = os.umask(0)
    try:
        listener = _open_socket("native", f"unix:{path}", None, None)  # type: ignore[arg-type]  # unused there
    finally:
        os.umask(previous)
    assert listener is not None
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        listener.close()
