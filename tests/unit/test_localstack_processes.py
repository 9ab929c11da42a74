"""How the local stack tells whether a daemon it stopped is gone (devtools/localstack.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from devtools.localstack import group_running, pid_running


def test_a_running_process_counts_and_an_exited_unreaped_one_does_not() -> None:
    """Postfix's master is PID 1's child once daemonized; a PID 1 that reaps late leaves it a
    zombie for a second or two, which ``kill(pid, 0)`` still finds."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert pid_running(child.pid)
        assert child.stdin is not None
        child.stdin.close()  # it exits; we do not reap it yet
        deadline = time.monotonic() + 30
        while pid_running(child.pid):
            assert time.monotonic() < deadline, "an exited child still counts as running"
            time.sleep(0.01)
        os.kill(child.pid, 0)  # still there, unreaped: what a plain liveness check would count
    finally:
        child.wait()
    assert not pid_running(child.pid)


def test_a_group_runs_while_any_of_its_processes_does() -> None:
    """``make stop`` waits for a part's whole process group (workers, children), not its leader."""
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               "subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'])"],
                              stdin=subprocess.PIPE, start_new_session=True)
    try:
        leader.wait(30)  # the leader is gone; its child, same group, still reads its stdin
        assert not pid_running(leader.pid)
        assert group_running(leader.pid)
    finally:
        assert leader.stdin is not None
        leader.stdin.close()  # the child's stdin too: it ends
    deadline = time.monotonic() + 30
    while group_running(leader.pid):
        assert time.monotonic() < deadline, "the group's last process never ended"
        time.sleep(0.01)
