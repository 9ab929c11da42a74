#!/usr/bin/env python3
"""CPU per message of two versions of the milter, A B A B in the same run.

    python -m bench.ab --before /path/to/other/checkout [--rounds 3] [--concurrency 32]

A is the milter from ``--before`` (a checkout of another commit: ``git worktree
add`` or ``git archive | tar -x``, with a model in its models/), B the one in
this tree; each behind its own Postfix, on the same clamd, settings, model and
corpus mix.  Reported per run: msg/s and the milter's process group + clamd
CPU per message (from /proc, so other work on a shared machine does not
count); then the mean of each side and the ratio B/A.  The machine is shared:
read the ratio, and run it more than once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.throughput import ROOT, load_messages, run_once, start_filter
from devtools.localstack import Postfix, free_port
from tests.harness.milterproc import MilterProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of version A")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs) and say where")
    args = parser.parse_args()
    before = args.before.resolve()
    if not (before / "stronghold" / "milter.py").exists() or not (before / "models" / "model.joblib").exists():
        print(f"{before}: not a source tree with a model", file=sys.stderr)
        return 1
    home = Path(tempfile.mkdtemp(prefix="stronghold-ab-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    parts: list = []
    saved = os.environ.get("PYTHONPATH")
    try:
        clamd, milter_b, settings = start_filter(home, parts)
        a_home = home / "a"
        (a_home / "milter").mkdir(parents=True)
        os.chmod(a_home, 0o755)  # noqa: S103
        os.chmod(a_home / "milter", 0o755)  # noqa: S103
        os.environ["PYTHONPATH"] = str(before)  # the child imports version A
        milter_a = MilterProcess(a_home, {**settings, "data_dir": str(a_home / "milter"),
                                          "models_dir": str(before / "models"),
                                          "milter_socket": f"unix:{a_home / 'milter' / 'milter.sock'}",
                                          "database_url": f"sqlite:///{a_home / 'store.db'}"})
        shutil.copy(home / "milter" / "store.db", a_home / "store.db")  # the same list entries
        milter_a.start()
        parts.append(milter_a)
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
        sides = []
        for label, milter in (("A", milter_a), ("B", milter_b)):
            postfix = Postfix(home / f"postfix-{label}", free_port(), milter=milter.address)
            postfix.start()
            parts.append(postfix)
            sides.append((label, postfix, milter))
        messages = load_messages(args.messages)
        for label, postfix, milter in sides:
            run_once(label, postfix, messages[:50], 4, milter, clamd)  # warm up
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        rate: dict[str, list[float]] = {"A": [], "B": []}
        for i in range(args.rounds):
            for label, postfix, milter in sides:
                r = run_once(label, postfix, messages, args.concurrency, milter, clamd)
                assert r.cpu_ms_per_msg is not None
                cpu[label].append(r.cpu_ms_per_msg)
                rate[label].append(r.rate)
                print(f"round {i + 1} {label}: {r.rate:6.1f} msg/s, milter+clamd {r.cpu_ms_per_msg:.3f} ms/msg "
                      f"({r.accepted} accepted, {r.rejected} rejected, {r.deferred} deferred)", flush=True)
        a, b = statistics.mean(cpu["A"]), statistics.mean(cpu["B"])
        print(f"A ({before}): {a:.3f} ms/msg, {statistics.mean(rate['A']):.1f} msg/s")
        print(f"B ({ROOT}): {b:.3f} ms/msg, {statistics.mean(rate['B']):.1f} msg/s")
        print(f"B/A CPU per message {b / a:.3f}; per round: "
              + ", ".join(f"{y / x:.3f}" for x, y in zip(cpu["A"], cpu["B"], strict=True)))
        return 0
    finally:
        for part in reversed(parts):
            part.stop()
        if args.keep:
            print(f"logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
