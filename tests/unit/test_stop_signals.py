"""A native worker told to stop twice at once (Ctrl-C or ``kill`` to the milter's process group
reaches each worker from the terminal and again from the supervisor) still stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# serve_worker in a process of its own; while its stop handler runs, a profile hook sends the
# next stop signal as the handler starts and at each call it makes (so one comes while the first
# one's handler holds whatever lock it takes); then the worker must return.
CHILD = r"""
import os, signal, socket, sys, threading
from types import SimpleNamespace
from stronghold import nativemilter

listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen()
sent = 0
inside = 0

def profile(frame, event, arg):
    global sent, inside
    handler = signal.getsignal(signal.SIGTERM)
    if frame.f_code is getattr(handler, "__code__", None) and event in ("call", "return"):
        inside += 1 if event == "call" else -1
    if inside and event in ("call", "c_call") and sent < 20 and arg is not os.kill:
        sent += 1
        os.kill(os.getpid(), signal.SIGTERM)

sys.setprofile(profile)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
nativemilter.serve_worker(listener, SimpleNamespace(cfg=SimpleNamespace(milter_timeout=5)))
sys.setprofile(None)
print("stopped after", sent + 1, "signals", flush=True)
"""


def test_a_stop_signal_inside_the_stop_handler_does_not_hang_the_worker(tmp_path: Path) -> None:
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "milter.sock")], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker hung on a second stop signal") from None
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped after" in done.stdout and "stopped after 1 signals" not in done.stdout
