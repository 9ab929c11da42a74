"""Each milter worker kept on a CPU of its own (``milter_cpu_affinity``), seen in the kernel's
own record of the real workers' threads."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.harness.milterproc import MilterProcess, wait_for

ALLOWED = sorted(os.sched_getaffinity(0))


def _start(home: Path, affinity: str, workers: int = 2) -> MilterProcess:
    home.mkdir(exist_ok=True)
    milter = MilterProcess(home, {
        "data_dir": str(home / "data"), "models_dir": str(home / "models"), "clamd_socket": "none",
        "milter_socket": f"unix:{home / 'milter.sock'}", "database_url": f"sqlite:///{home / 'store.db'}",
        "milter_workers": workers, "milter_cpu_affinity": affinity,
        "metrics_bind": "", "model_sync_seconds": 0})  # the workers: its only children
    milter.start()
    return milter


def _workers(milter: MilterProcess, count: int) -> dict[int, int]:
    """slot -> pid of the running workers, from their start-up lines (a restarted slot: the newest)."""
    assert milter.proc is not None
    def found() -> dict[int, int]:
        slots: dict[int, int] = {}
        for slot, pid in re.findall(r"\[w(\d+) (\d+)\] ", milter.log()):
            if os.path.exists(f"/proc/{pid}") and _parent(int(pid)) == milter.proc.pid:
                slots[int(slot)] = int(pid)
        return slots
    wait_for(lambda: len(found()) == count, 30, f"{count} workers logging")
    return found()


def _children(milter: MilterProcess, count: int) -> list[int]:
    assert milter.proc is not None
    parent = milter.proc.pid
    def found() -> list[int]:
        return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == parent]
    wait_for(lambda: len(found()) == count, 30, f"{count} workers")
    return found()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return -1


def _thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of process ``pid``."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to give each worker its own")
def test_auto_keeps_each_worker_and_all_its_threads_on_its_own_cpu_also_after_a_restart(tmp_path: Path) -> None:
    milter = _start(tmp_path / "auto", "auto", workers=2)
    try:
        slots = _workers(milter, 2)
        for slot, pid in slots.items():
            expected = frozenset({ALLOWED[slot - 1]})
            assert _thread_cpus(pid) == {expected}, f"worker w{slot}"
            assert f"worker w{slot} (pid {pid}) kept on CPU {min(expected)}" in milter.log()
        assert os.sched_getaffinity(milter.proc.pid) == set(ALLOWED)  # the supervisor is not kept
        os.kill(slots[1], signal.SIGKILL)  # a dead worker comes back on its slot's CPU
        wait_for(lambda: _workers(milter, 2)[1] != slots[1], 30, "worker w1 restarted")
        assert _thread_cpus(_workers(milter, 2)[1]) == {frozenset({ALLOWED[0]})}
    finally:
        milter.stop()
    crowded = len(ALLOWED) + 1  # more workers than CPUs: pinned, two would share one for good
    milter = _start(tmp_path / "crowded", "auto", workers=crowded)
    try:
        for pid in _workers(milter, crowded).values():
            assert _thread_cpus(pid) == {frozenset(ALLOWED)}
        assert f"left to the kernel: {crowded} workers, {len(ALLOWED)} CPUs" in milter.log()
    finally:
        milter.stop()


def test_off_leaves_workers_to_the_kernel_and_a_list_names_the_cpus(tmp_path: Path) -> None:
    milter = _start(tmp_path / "off", "off")
    try:
        for pid in _children(milter, 2):
            assert _thread_cpus(pid) == {frozenset(ALLOWED)}
        assert "kept on CPU" not in milter.log()
    finally:
        milter.stop()
    last = str(ALLOWED[-1])
    milter = _start(tmp_path / "listed", f"{last},4095")  # a CPU this machine lacks is passed over
    try:
        for pid in _children(milter, 2):
            assert _thread_cpus(pid) == {frozenset({ALLOWED[-1]})}
    finally:
        milter.stop()
