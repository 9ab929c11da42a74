#!/usr/bin/env python3
"""SMTP latency at a steady offered load: what a filter adds when the machine is not saturated.

`bench.throughput` keeps N clients sending back to back: the machine is always saturated, and
by Little's law its latencies are N over the rate, so a filter's p99 there says mostly how much
CPU it takes.  Here messages arrive on their own clock instead (Poisson arrivals at a fixed
rate, the same seeded schedule for every system), as mail does, and each system's latency is
the time its Postfix takes to answer the message, filter included.  Systems alternate round by
round (A B, then B A).

    python -m bench.latency [--rates 100 200 300] [--messages 1500] [--rounds 2] [--peers]

Prints a Markdown table: offered and achieved msg/s, p50 / p90 / p99 / max latency, and each
filter's p99 above Postfix alone's at the same rate.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.ab import _value
from bench.peers import Rspamd
from bench.throughput import ALONE, OURS, RSPAMD, load_messages, percentile_ms, send_nth, start_filter
from devtools.localstack import Postfix, free_port


async def offer(port: int, messages: list[bytes], rate: float, seed: int = 7
                ) -> tuple[list[tuple[int, float]], float]:
    """Send ``messages`` at Poisson arrivals of ``rate`` per second, each on its own connection,
    without waiting for earlier ones; ([(reply code, seconds)], seconds from first to last reply)."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    due = 0.0
    tasks = []
    for i, data in enumerate(messages):
        due += rng.expovariate(rate)
        wait = started + due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(send_nth(port, i, data)))
    results = await asyncio.gather(*tasks)
    return list(results), loop.time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 200, 300])
    parser.add_argument("--messages", type=int, default=1500, help="messages per system, rate and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peers", action="store_true", help="also rspamd 3.4 with local rules only")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a milter setting (repeatable), e.g. milter_cpu_affinity=off")
    args = parser.parse_args()
    extra = {name: _value(value) for name, _, value in (item.partition("=") for item in args.setting)}
    home = Path(tempfile.mkdtemp(prefix="stronghold-latency-"))
    home.chmod(0o755)
    parts: list = []
    started = time.time()
    try:
        _clamd, milter, _settings = start_filter(home, parts, extra=extra)
        systems: list[tuple[str, Postfix]] = []
        for label, name, address in ((ALONE, "plain", None), (OURS, "filtered", milter.address)):
            postfix = Postfix(home / name, free_port(), milter=address)
            postfix.start()
            parts.append(postfix)
            systems.append((label, postfix))
        if args.peers:
            rspamd = Rspamd(home / "rspamd")
            parts.append(rspamd)
            rspamd.start()
            postfix = Postfix(home / "filtered-rspamd", free_port(), milter=rspamd.address)
            postfix.start()
            parts.append(postfix)
            systems.append((RSPAMD, postfix))
        messages = load_messages(args.messages)
        for _label, postfix in systems:  # warm up: connections, model pages, clamd
            asyncio.run(offer(postfix.port, messages[:100], 50))
        rows: dict[tuple[str, float], list[tuple[list[float], float, int]]] = {}
        for rate in args.rates:
            for i in range(args.rounds):
                for label, postfix in (systems if i % 2 == 0 else systems[::-1]):
                    results, seconds = asyncio.run(offer(postfix.port, messages, rate))
                    latencies = [s for code, s in results if code < 400]
                    failed = sum(1 for code, _ in results if code >= 400)
                    rows.setdefault((label, rate), []).append((latencies, len(results) / seconds, failed))
                    print(f"  {label:42} {rate:5.0f}/s offered: p99 {percentile_ms(latencies, 0.99):6.1f} ms",
                          file=sys.stderr, flush=True)
        print(render(rows, systems, args, time.time() - started))
        return 1 if any(failed for runs in rows.values() for _l, _r, failed in runs) else 0
    finally:
        for part in reversed(parts):
            part.stop()
        shutil.rmtree(home, ignore_errors=True)


def render(rows: dict[tuple[str, float], list[tuple[list[float], float, int]]],
           systems: list[tuple[str, Postfix]], args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# SMTP latency at a steady offered load, {time.strftime('%Y-%m-%d %H:%M')} UTC", "",
             f"`python -m bench.latency --rates {' '.join(f'{r:g}' for r in args.rates)} --messages "
             f"{args.messages} --rounds {args.rounds}{' --peers' if args.peers else ''}"
             f"{''.join(' --setting ' + item for item in args.setting)}`, {seconds:.0f} s in "
             "all: Poisson arrivals, one connection per message, corpus ham and spam 50/50, clamd, "
             "classifier, lists and message log on; latency from connect to the reply to the message "
             "(rounds pooled).", "",
             "| system | offered msg/s | achieved msg/s | p50 ms | p90 ms | p99 ms | max ms | p99 above Postfix alone "
             "| failed |", "|---|---|---|---|---|---|---|---|---|"]
    for rate in args.rates:
        base = percentile_ms([s for lat, _r, _f in rows[(ALONE, rate)] for s in lat], 0.99)
        for label, _postfix in systems:
            runs = rows[(label, rate)]
            pooled = [s for lat, _r, _f in runs for s in lat]
            p50, p90, p99, top = (percentile_ms(pooled, q) for q in (0.5, 0.9, 0.99, 1.0))
            above = "-" if label == ALONE else f"{p99 - base:+.1f} ms"
            lines.append(f"| {label} | {rate:g} | {statistics.mean(r for _l, r, _f in runs):.1f} "
                         f"| {p50:.1f} | {p90:.1f} | {p99:.1f} | {top:.1f} "
                         f"| {above} | {sum(f for _l, _r, f in runs)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
