#!/usr/bin/env python3
"""Soak: mixed load through Postfix + the milter for a while, milter memory sampled over time.

    python -m bench.soak [--minutes 20] [--concurrency 8] [--every 30]

Prints one line per sample (messages so far, rate, the PSS of all the milter's processes
together, RSS of each worker) and the
growth between the first sample after warm-up and the last.  Exits non-zero if
a message was lost or a worker grew by more than --max-growth-mb.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import drive, group_pids, load_messages, proc_kb, pss_mb, start_filter
from devtools.localstack import Postfix, free_port


def rss_mb(pid: int) -> float:
    return proc_kb(pid, "status", "VmRSS") / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--max-growth-mb", type=float, default=20)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="stronghold-soak-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    parts: list = []
    try:
        _clamd, milter, _settings = start_filter(home, parts)
        postfix = Postfix(home / "postfix", free_port(), milter=milter.address,
                          extra={"default_transport": "discard:soak", "virtual_transport": "discard:soak"})
        postfix.start()
        parts.append(postfix)
        messages = load_messages(400)
        deadline = time.monotonic() + args.minutes * 60
        started = time.monotonic()
        sent = lost = 0
        samples: list[tuple[float, int, list[float]]] = []
        next_sample = started
        print("seconds  messages  msg/s  milter PSS MB (all processes)  worker RSS MB")
        while time.monotonic() < deadline:
            results, _ = asyncio.run(drive(postfix.port, messages, args.concurrency))
            sent += len(results)
            lost += sum(1 for code, _ in results if 400 <= code < 500 or code == 421)
            if time.monotonic() >= next_sample:
                workers = [p for p in group_pids(milter.proc.pid) if p != milter.proc.pid]
                rss = sorted(rss_mb(p) for p in workers)
                elapsed = time.monotonic() - started
                samples.append((elapsed, sent, rss))
                pss = pss_mb(group_pids(milter.proc.pid))
                print(f"{elapsed:7.0f}  {sent:8d}  {sent / elapsed:5.0f}  {pss:29.1f}  "
                      f"{' '.join(f'{r:.1f}' for r in rss)}", flush=True)
                next_sample += args.every
        warm = samples[min(1, len(samples) - 1)]
        last = samples[-1]
        growth = max(b - a for a, b in zip(warm[2], last[2], strict=False)) if warm[2] and last[2] else 0.0
        restarts = milter.log().count("exited")
        print(f"\n{sent} messages in {last[0]:.0f}s; temporary failures {lost}; worker restarts {restarts}; "
              f"largest worker RSS growth after warm-up {growth:+.1f} MB ({warm[2]} -> {last[2]})")
        return 1 if lost or restarts or growth > args.max_growth_mb else 0
    finally:
        for part in reversed(parts):
            part.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
