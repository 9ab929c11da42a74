"""`make run`'s stack (devtools/devstack.py) on free ports in a folder of its own: mail in over SMTP,
read back over IMAP with the password it printed, the web UI answering, and nothing left running after
``stop``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devtools.localstack import free_port, pid_running, processes, wait_for
from stronghold.store import ledger
from stronghold.store.db import Store
from tests.conftest import ROOT, shared_tmpdir
from tests.e2e import mail
from tests.harness.imapbox import Mailboxes

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.dovecot, pytest.mark.corpus]


def _devstack(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devtools.devstack", action], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid, fields in processes():
        tree.setdefault(int(fields[1]), []).append(pid)
    return tree


def _stack_processes(home: Path) -> set[int]:
    """Every process the stack runs: the ones it recorded (web, expiry, milter, dovecot, clamd),
    Postfix's master, and all their descendants."""
    roots = {int(p.read_text()) for p in home.glob("*.pid")}
    roots.add(int((home / "postfix" / "queue" / "pid" / "master.pid").read_text().split()[0]))
    tree, found, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(tree.get(pid, []))
    return found


def _imap_marks(store: Store) -> list[tuple[bool | None, str]]:
    with store.session() as s:
        return [(r.label, r.who) for r in ledger.rows(s) if r.source == "imap"]


def _cli_reaches_the_stack(printed: str, env: dict[str, str]) -> None:
    """The CLI line printed works on this stack's store, and --check-config finds this stack's
    Postfix and clamd agreeing with the milter on sizes (no warning: it read another Postfix before)."""
    cli = re.search(r"^  CLI +STRONGHOLD_CONFIG=(\S+) (\S+) \.\.\.", printed, re.M)
    assert cli is not None, printed
    conf, program = cli.groups()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([program, *args], env={**env, "STRONGHOLD_CONFIG": conf}, capture_output=True,
                              text=True, timeout=120, check=False)

    users = run("user", "ls")
    assert users.returncode == 0 and users.stdout.split("\t")[:2] == ["admin", "admin"], users
    check = run("milter", "--check-config")
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert "WARNING" not in check.stdout + check.stderr, check.stdout[-2000:] + check.stderr[-2000:]


def test_devstack_on_free_ports_delivers_serves_and_stops_everything(models_dir: Path) -> None:
    home = shared_tmpdir("stronghold-devstack-")
    ports = {name: free_port() for name in ("SMTP", "RELEASE", "IMAP", "WEB")}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("STRONGHOLD_", "DEVSTACK_"))},
           "PYTHONPATH": str(ROOT), "DEVSTACK_HOME": str(home), "DEVSTACK_MODELS_DIR": str(models_dir),
           **{f"DEVSTACK_{name}_PORT": str(port) for name, port in ports.items()}}
    processes: set[int] = set()
    started = _devstack("start", env)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert f"127.0.0.1:{ports['SMTP']}" in started.stdout and f"http://127.0.0.1:{ports['WEB']}/" in started.stdout
        assert f"Stop it with: DEVSTACK_HOME={home.resolve()} make stop" in started.stdout  # not the default one's
        login = re.search(r"^IMAP user: (\S+), password (\S+)", started.stdout, re.M)
        assert login is not None, started.stdout
        user, password = login.groups()
        _cli_reaches_the_stack(started.stdout, env)

        tid, data = mail.simple()
        assert mail.send(ports["SMTP"], "carol@sender.example", [user], data) == {}
        boxes = Mailboxes(ports["IMAP"], {user: password})
        found = boxes.wait_for(user, tid, timeout=30)
        assert list(found) == ["INBOX"] and mail.headers(found["INBOX"][0])["X-Spam-Flag"] == "NO"
        client = boxes.connect(user)  # moving it into Junk is feedback, as in production
        try:
            client.select("INBOX")
            uid = client.uid("SEARCH", "ALL")[1][0].split()[-1]
            assert client.uid("MOVE", uid, '"Junk"')[0] == "OK"
        finally:
            client.logout()
        with Store(f"sqlite:///{home / 'store.db'}") as store:
            wait_for(lambda: _imap_marks(store) == [(True, user)], 60, "the move into Junk in the ledger")

        with urllib.request.urlopen(f"http://127.0.0.1:{ports['WEB']}/login", timeout=10) as page:
            assert page.status == 200 and b'name="password"' in page.read()

        processes = _stack_processes(home)
        assert len(processes) >= 6  # web, expiry, milter (+ workers), dovecot (+ children), clamd, Postfix
    finally:
        stopped = _devstack("stop", env)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    deadline = time.monotonic() + 10
    while {p for p in processes if pid_running(p)} and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {p for p in processes if pid_running(p)}
    for pid in left:  # the test fails below; leave nothing running behind it
        os.kill(pid, signal.SIGKILL)
    assert left == set()
    assert [port for port in ports.values() if _listening(port)] == []
    shutil.rmtree(home, ignore_errors=True)
