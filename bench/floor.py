"""The protocol floors beside the Stronghold milter: what libmilter and our native engine cost.

    python -m bench.floor [--rounds 3] [--concurrency 32] [--spin-ms 1.9]

Six milters, each behind its own Postfix, driven in turn with the same corpus mix
(rounds alternate the order): the no-op milter in one process (pymilter's way), the
no-op pre-forked into 2 workers (ours), the same burning ``--spin-ms`` of CPU in end of
message while holding the GIL (a filter's work, done by nothing but a loop), the no-op on
the product's native engine without and with the spin, and Stronghold (its default engine).
Per round: the milter's processes' user and system CPU per message (from
/proc) and, where ``perf`` may count syscalls, futex / poll / read / write+writev calls
and context switches per message.  What the spinning no-op costs beyond its spin is the
floor any pymilter filter doing that much work pays; what Stronghold costs beyond its
own callbacks (``bench.stagecpu``) can be held against it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stagecpu import proc_cpu
from bench.throughput import drive, group_pids, load_messages, start_filter
from devtools.localstack import Postfix, _unix_connects, free_port, stop_process, wait_for

EVENTS = ("syscalls:sys_enter_futex", "syscalls:sys_enter_poll", "syscalls:sys_enter_read",
          "syscalls:sys_enter_write", "syscalls:sys_enter_writev", "context-switches")


class Noop:
    """bench.noop_milter with the given options, in a folder of its own."""

    def __init__(self, home: Path, *options: str) -> None:
        self.home, self.options = home, options
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.home / 'noop.sock'}"

    def start(self) -> None:
        self.home.mkdir(parents=True)
        os.chmod(self.home, 0o755)  # noqa: S103 - Postfix must reach the socket
        with open(self.home / "noop.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.noop_milter", self.address, *self.options],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=Path(__file__).resolve().parent.parent)
        wait_for(lambda: self.proc is not None and self.proc.poll() is None
                 and _unix_connects(self.home / "noop.sock"), 60, "no-op milter")

    def stop(self) -> None:
        stop_process(self.proc)


def _perf(pids: list[int]) -> subprocess.Popen[str] | None:
    if shutil.which("perf") is None:
        return None
    proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    return proc if proc.poll() is None else None


def _counts(proc: subprocess.Popen[str] | None) -> dict[str, int]:
    if proc is None:
        return {}
    proc.send_signal(2)
    out = {}
    for line in proc.communicate()[1].splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            out[fields[2].rsplit(":", 1)[-1].replace("sys_enter_", "")] = int(fields[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--spin-ms", type=float, default=1.9, help="what Stronghold's callbacks take (bench.stagecpu)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="stronghold-floor-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    parts: list = []
    try:
        milters: list[tuple[str, object]] = []
        for label, options in (("no-op, 1 process", ()), ("no-op, 2 workers", ("--workers", "2")),
                               (f"no-op, 2 workers, {args.spin_ms} ms spin", ("--workers", "2", "--spin-ms",
                                                                              str(args.spin_ms))),
                               ("no-op, native engine, 2 workers", ("--native",)),
                               (f"no-op, native engine, {args.spin_ms} ms spin", ("--native", "--spin-ms",
                                                                                   str(args.spin_ms)))):
            noop = Noop(home / f"noop{len(milters)}", *options)
            noop.start()
            parts.append(noop)
            milters.append((label, noop))
        _clamd, stronghold, _settings = start_filter(home, parts)
        milters.append(("Stronghold (2 workers)", stronghold))
        sides = []
        for label, m in milters:
            postfix = Postfix(home / f"postfix{len(sides)}", free_port(), milter=m.address)  # type: ignore[attr-defined]
            postfix.start()
            parts.append(postfix)
            sides.append((label, postfix, m))
        messages = load_messages(args.messages)
        for _label, postfix, _m in sides:
            asyncio.run(drive(postfix.port, messages[:300], 8))  # warm up
        rows: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in sides}
        for i in range(args.rounds):
            for label, postfix, m in (sides if i % 2 == 0 else sides[::-1]):
                pids = group_pids(m.proc.pid)  # type: ignore[attr-defined]
                user0, sys0 = proc_cpu(pids)
                perf = _perf(pids)
                results, seconds = asyncio.run(drive(postfix.port, messages, args.concurrency))
                counts = _counts(perf)
                time.sleep(0.3)
                user1, sys1 = proc_cpu(group_pids(m.proc.pid))  # type: ignore[attr-defined]
                n = len(results)
                row = {"user": (user1 - user0) * 1000 / n, "system": (sys1 - sys0) * 1000 / n, "msg/s": n / seconds,
                       **{k: v / n for k, v in counts.items()}}
                rows[label].append(row)
                print(f"round {i + 1} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        keys = list(next(iter(rows.values()))[0])
        print(f"\n| milter (c={args.concurrency}, mean of {args.rounds} rounds) | CPU ms/msg | "
              + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
        for label, values in rows.items():
            mean = {k: statistics.mean(r.get(k, 0.0) for r in values) for k in keys}
            print(f"| {label} | {mean['user'] + mean['system']:.3f} | " + " | ".join(f"{mean[k]:.2f}" for k in keys)
                  + " |")
        return 0
    finally:
        for part in reversed(parts):
            part.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
