"""Where a message's CPU goes: CPU per message of every process on the machine, by name.

    python -m bench.breakdown [--concurrency 32] [--messages 1200] [--variant NAME=VALUE ...]

Sends the same corpus messages through Postfix alone and through Postfix with
the milter (clamd, classifier, lists, message log), and for each run prints the
machine's busy time per message and each process name's share (Postfix's
daemons, clamd, the milter's workers; "python" includes the load generator,
whose own share is printed apart).  Ticks from /proc, so use runs of a second
or more.  ``--variant`` adds, in the same run, a second milter with those
settings (e.g. ``--variant metrics_bind=127.0.0.1:9464`` for the cost of
metrics); ``--rounds`` repeats the runs in turn, as the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import TICKS, group_pids, load_messages, run_once, start_filter
from devtools.localstack import Postfix, free_port


def cpu_by_pid() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def machine_busy() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICKS  # all but idle and iowait


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--variant", action="append", metavar="NAME=VALUE",
                        help="also run a second milter with this setting (repeat for several)")
    parser.add_argument("--rounds", type=int, default=1, help="run every system this many times, in turn")
    args = parser.parse_args()
    variant = dict(item.split("=", 1) for item in args.variant or ())
    home = Path(tempfile.mkdtemp(prefix="stronghold-breakdown-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    parts: list = []
    try:
        clamd, milter, _settings = start_filter(home, parts)
        runs = [("Postfix alone", None, "plain"), ("Postfix + Stronghold", milter, "filtered")]
        if variant:
            _, other, _ = start_filter(home, parts, clamd=clamd, folder="variant", extra=variant)
            runs.append((f"Postfix + Stronghold ({', '.join(args.variant)})", other, "filtered-variant"))
        systems = []
        for name, filter_process, folder in runs:
            postfix = Postfix(home / folder, free_port(),
                              milter=filter_process.address if filter_process is not None else None)
            postfix.start()
            parts.append(postfix)
            systems.append((name, postfix, filter_process))
        messages = load_messages(args.messages)
        for name, postfix, filter_process in systems * args.rounds:
            run_once(name, postfix, messages[:50], 4, None, None)  # warm up
            time.sleep(1)
            before, busy, own = cpu_by_pid(), machine_busy(), time.process_time()
            result = run_once(name, postfix, messages, args.concurrency, None, None)
            time.sleep(2)  # let delivery finish
            after, busy, own = cpu_by_pid(), machine_busy() - busy, time.process_time() - own
            shares: dict[str, float] = {}
            for pid, (proc, seconds) in after.items():
                shares[proc] = shares.get(proc, 0.0) + seconds - before.get(pid, (proc, 0.0))[1]
            n = result.sent
            milter_cpu = ""
            if filter_process is not None and filter_process.proc is not None:
                pids = set(group_pids(filter_process.proc.pid))  # the milter's own processes only
                seconds = sum(after[p][1] - before.get(p, after[p])[1] for p in pids if p in after)
                milter_cpu = f", the milter's processes {seconds * 1000 / n:.3f}"
            print(f"{name}: {result.rate:.0f} msg/s at concurrency {args.concurrency}; machine busy "
                  f"{busy * 1000 / n:.2f} ms/msg, load generator {own * 1000 / n:.2f}{milter_cpu}")
            print("   " + ", ".join(f"{proc} {seconds * 1000 / n:.2f}" for proc, seconds
                                    in sorted(shares.items(), key=lambda kv: -kv[1]) if seconds * 1000 / n >= 0.01))
    finally:
        for part in reversed(parts):
            part.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
