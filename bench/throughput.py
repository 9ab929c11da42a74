#!/usr/bin/env python3
"""Throughput of Postfix with the Stronghold milter against Postfix alone, on loopback.

A (Postfix alone) and B (Postfix + milter over a unix socket, with clamd, the
classifier, the lists and the message log all on) are measured in the same run,
interleaved A B A B at each concurrency, with the same mix of corpus ham and
spam.  Both Postfix instances deliver accepted mail into a maildir (or, with
--delivery discard, drop it: the SMTP-only ceiling).  Reported per run:
messages/s, SMTP latency p50/p99 (connect to the reply to DATA), milter + clamd
CPU ms per message, milter peak RSS, and the accounting sent = accepted +
rejected + deferred, with every accepted message found delivered in the log.

    python -m bench.throughput [--messages 1200] [--concurrency 1 8 32] [--tcp]

Writes a Markdown table to stdout and to bench/results/throughput-<date>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers import NoopMilter, Rspamd
from devtools.localstack import TEST_SIGNATURES, Clamd, Postfix, free_port
from stronghold.store import entries
from stronghold.store.db import Store
from tests.harness.milterproc import MilterProcess

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "data"
RESULTS = ROOT / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    label: str
    concurrency: int
    sent: int
    seconds: float
    accepted: int = 0
    rejected: int = 0
    deferred: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu_ms_per_msg: float | None = None  # filter + clamd
    filter_cpu_ms: float | None = None  # the filter's processes alone (milter workers; rspamd + Redis)
    clamd_cpu_ms: float | None = None
    milter_rss_mb: float | None = None
    filter_pss_mb: float | None = None  # all the filter's processes together (rspamd: with Redis)
    delivered_in_log: int | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    def pct(self, q: float) -> float:
        return percentile_ms(self.latencies, q)


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q`` quantile of latencies in seconds, in milliseconds (nan for none)."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def load_messages(n: int) -> list[bytes]:
    lines = (CORPUS / "index.test").read_text().split("\n")
    ham = [CORPUS / ln.split(" ", 1)[1] for ln in lines if ln.startswith("ham ")]
    spam = [CORPUS / ln.split(" ", 1)[1] for ln in lines if ln.startswith("spam ")]
    rng = random.Random(42)
    picked = [rng.choice(ham) if i % 2 else rng.choice(spam) for i in range(n)]
    out = []
    for path in picked:
        raw = path.read_bytes()
        if raw.startswith(b"From ") and b"\n" in raw:
            raw = raw.split(b"\n", 1)[1]
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        raw = re.sub(rb"(?m)^\.", b"..", raw)  # dot-stuffing
        out.append(raw)
    return out


LAST_4XX: dict[str, int] = {}


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            if line.startswith(b"4"):
                text = line.decode(errors="replace").strip()[:80]
                LAST_4XX[text] = LAST_4XX.get(text, 0) + 1
            return int(line[:3])


SENDS = itertools.count(1)


async def send_one(port: int, sender: str, rcpt: str, data: bytes) -> tuple[int, float]:
    """One SMTP transaction; the message goes with a header line of its own, so no two sends
    are the same bytes: clamd keeps the digests of clean files it scanned, and a benchmark
    that resends its messages would measure that cache rather than scanning (real mail does
    not repeat whole)."""
    data = b"X-Bench-Send: %d\r\n" % next(SENDS) + data
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        for cmd in (b"EHLO bench.example", f"MAIL FROM:<{sender}>".encode(), f"RCPT TO:<{rcpt}>".encode()):
            writer.write(cmd + b"\r\n")
            code = await _reply(reader)
            if code >= 400:
                return code, time.perf_counter() - started
        writer.write(b"DATA\r\n")
        if (code := await _reply(reader)) != 354:
            return code, time.perf_counter() - started
        writer.write(data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        code = await _reply(reader)
        elapsed = time.perf_counter() - started
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return code, elapsed
    finally:
        writer.close()


async def send_nth(port: int, i: int, data: bytes) -> tuple[int, float]:
    """The ``i``-th message of a run, from one of 50 senders to one of 20 recipients; a
    connection that failed counts as 421."""
    try:
        return await send_one(port, f"sender{i % 50}@load.example", f"user{i % 20}@example.com", data)
    except (ConnectionError, OSError):
        return 421, 0.0


async def drive(port: int, messages: list[bytes], concurrency: int) -> tuple[list[tuple[int, float]], float]:
    queue = list(enumerate(messages))
    results: list[tuple[int, float]] = []

    async def worker() -> None:
        while queue:
            i, data = queue.pop()
            results.append(await send_nth(port, i, data))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


def proc_kb(pid: int, name: str, field: str) -> int:
    """A ``field:`` line's kB from /proc/<pid>/<name> (``status``, ``smaps_rollup``); 0 once gone."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def peak_rss_mb(pids: list[int]) -> float:
    return max((proc_kb(pid, "status", "VmHWM") / 1024 for pid in pids), default=0.0)


def pss_mb(pids: list[int]) -> float:
    """The memory the processes take together: each one's proportional set size (pages shared
    between them counted once in all), from /proc/<pid>/smaps_rollup."""
    return sum(proc_kb(pid, "smaps_rollup", "Pss") for pid in pids) / 1024


def sent_lines(postfix: Postfix) -> int:
    return postfix.log().count("status=sent")


def filter_pids(milter: MilterProcess | Rspamd | NoopMilter | None) -> list[int]:
    """The filter's processes: its process group, and for rspamd its private Redis."""
    if milter is None or milter.proc is None:
        return []
    pids = group_pids(milter.proc.pid)
    if isinstance(milter, Rspamd):
        pids += [pid for pid in milter.pids() if pid not in pids]
    return pids


def run_once(label: str, postfix: Postfix, messages: list[bytes], concurrency: int,
             milter: MilterProcess | Rspamd | NoopMilter | None, clamd: Clamd | None) -> RunResult:
    pids = filter_pids(milter)
    clamd_pids = [clamd.proc.pid] if clamd and clamd.proc else []
    filter_before, clamd_before = cpu_seconds(pids), cpu_seconds(clamd_pids)
    log_before = sent_lines(postfix)
    results, seconds = asyncio.run(drive(postfix.port, messages, concurrency))
    res = RunResult(label, concurrency, len(results), seconds)
    for code, latency in results:
        if code < 300:
            res.accepted += 1
            res.latencies.append(latency)
        elif code < 500:
            res.deferred += 1
        else:
            res.rejected += 1
            res.latencies.append(latency)
    if pids:
        res.filter_cpu_ms = (cpu_seconds(pids) - filter_before) * 1000 / len(results)
        res.clamd_cpu_ms = (cpu_seconds(clamd_pids) - clamd_before) * 1000 / len(results)
        res.cpu_ms_per_msg = res.filter_cpu_ms + res.clamd_cpu_ms
        res.milter_rss_mb = peak_rss_mb(filter_pids(milter))
        res.filter_pss_mb = pss_mb(filter_pids(milter))
    deadline = time.monotonic() + 30
    while sent_lines(postfix) - log_before < res.accepted and time.monotonic() < deadline:
        time.sleep(0.2)
    res.delivered_in_log = sent_lines(postfix) - log_before
    return res


LIST_ENTRIES = [*((f"user{i}@example.com", "allow", f"sender{i}@load.example") for i in range(0, 20, 3)),
                ("user1@example.com", "block", "@blocked.example")]


def start_filter(home: Path, parts: list, clamd: Clamd | None = None, folder: str = "milter",
                 extra: Mapping[str, object] | None = None, process: type[MilterProcess] = MilterProcess
                 ) -> tuple[Clamd, MilterProcess, dict[str, object]]:
    """clamd, a store with a few list entries, and the milter (2 workers, unix socket) under ``home``.

    ``process``: how the milter is run (a MilterProcess subclass: the selector experiment, stage timers).

    Each started part is appended to ``parts`` at once, so the caller can stop them all.
    A second milter (``folder``, settings ``extra``) may share the first one's ``clamd``.
    """
    if clamd is None:
        clamd = Clamd(home / "clamd", TEST_SIGNATURES)
        clamd.start()
        parts.append(clamd)
    db_url = f"sqlite:///{home / folder / 'store.db'}"
    (home / folder).mkdir()
    os.chmod(home / folder, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    store = Store(db_url)
    store.upgrade()
    with store.session() as s:  # some real list work for the engine
        for owner, kind, pattern in LIST_ENTRIES:
            entries.add_entry(s, owner, kind, pattern)
    store.dispose()
    settings: dict[str, object] = {
        "data_dir": str(home / folder), "models_dir": str(ROOT / "models"),
        "milter_socket": f"unix:{home / folder / 'milter.sock'}", "clamd_socket": clamd.address,
        "database_url": db_url, "milter_workers": 2, **(extra or {})}
    milter = process(home / folder, settings, source=ROOT)  # this tree, wherever the bench runs from
    milter.start()
    parts.append(milter)
    return clamd, milter, settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1200, help="messages per run (c=1 runs use a quarter)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs per concurrency")
    parser.add_argument("--tcp", action="store_true", help="also measure the milter over TCP loopback")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs) and say where")
    parser.add_argument("--peers", action="store_true",
                        help="also measure rspamd 3 as a milter, local rules only and with antivirus (same clamd) "
                             "+ Bayes (Redis, trained on index.train)")
    parser.add_argument("--noop", action="store_true",
                        help="also measure no-op milters (the floors): pymilter, our native engine, and our native "
                             "engine doing nothing but clamd (the floor of a virus-scanning filter)")
    parser.add_argument("--delivery", choices=("maildir", "discard"), default="maildir",
                        help="what Postfix does with accepted mail: deliver into a maildir (as a mail server does), "
                             "or discard it (the SMTP-only ceiling)")
    args = parser.parse_args()
    if not (ROOT / "models" / "model.joblib").exists():
        print("no model: run make model", file=sys.stderr)
        return 1
    home = Path(tempfile.mkdtemp(prefix="stronghold-bench-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    started = time.time()
    parts: list = []
    try:
        clamd, milter, settings = start_filter(home, parts)
        discard = {"default_transport": "discard:bench", "relay_transport": "discard:bench",
                   "virtual_transport": "discard:bench"} if args.delivery == "discard" else {}
        def behind_postfix(name: str, milter_address: str | None = None) -> Postfix:
            postfix = Postfix(home / name, free_port(), milter=milter_address, extra=discard)
            postfix.start()
            parts.append(postfix)
            return postfix

        systems: list[tuple[str, Postfix, MilterProcess | Rspamd | NoopMilter | None]] = [
            ("Postfix alone", behind_postfix("plain"), None),
            ("Postfix + Stronghold (unix)", behind_postfix("filtered", milter.address), milter)]
        if args.peers:
            rspamd = Rspamd(home / "rspamd")
            parts.append(rspamd)
            rspamd.start()
            systems.append((RSPAMD, behind_postfix("filtered-rspamd", rspamd.address), rspamd))
            full = Rspamd(home / "rspamd-full", full=True, clamd_socket=clamd.socket_path,
                          train_index=CORPUS / "index.train")
            parts.append(full)
            full.start()
            systems.append((RSPAMD_FULL, behind_postfix("filtered-rspamd-full", full.address), full))
        if args.noop:
            noop = NoopMilter(home / "noop")
            noop.start()
            parts.append(noop)
            systems.append(("Postfix + no-op pymilter (unix)", behind_postfix("filtered-noop", noop.address), noop))
            noop_native = NoopMilter(home / "noop-native", native=True)
            noop_native.start()
            parts.append(noop_native)
            systems.append(("Postfix + no-op, native engine (unix)", behind_postfix("filtered-noop-native",
                                                                                   noop_native.address), noop_native))
            clamd_only = NoopMilter(home / "clamd-only", native=True, clamd=clamd.address)
            clamd_only.start()
            parts.append(clamd_only)
            systems.append((CLAMD_ONLY, behind_postfix("filtered-clamd-only", clamd_only.address), clamd_only))
        if args.tcp:
            tcp_home = home / "tcp"
            (tcp_home / "milter").mkdir(parents=True)
            os.chmod(tcp_home, 0o755)  # noqa: S103
            tcp_milter = MilterProcess(tcp_home, {**settings, "data_dir": str(tcp_home / "milter"),
                                                  "milter_socket": f"inet:{free_port()}@127.0.0.1"})
            tcp_milter.start()
            parts.append(tcp_milter)
            systems.append(("Postfix + Stronghold (tcp)", behind_postfix("filtered-tcp", tcp_milter.address),
                            tcp_milter))
        messages = load_messages(args.messages)
        def scanner_of(m: MilterProcess | Rspamd | NoopMilter | None) -> Clamd | None:
            # clamd's CPU counts for the systems that use it: our milter and the full rspamd
            return clamd if (isinstance(m, MilterProcess) or (isinstance(m, Rspamd) and m.full)
                             or (isinstance(m, NoopMilter) and m.clamd)) else None

        for label, postfix, m in systems:  # warm up: connections, model pages, clamd
            run_once(label, postfix, messages[:50], 4, m, scanner_of(m))
        results: list[RunResult] = []
        for conc in args.concurrency:
            batch = messages if conc > 1 else messages[: max(50, len(messages) // 4)]
            for _ in range(args.rounds):
                for label, postfix, m in systems:
                    r = run_once(label, postfix, batch, conc, m, scanner_of(m))
                    results.append(r)
                    print(f"  {label:30} c={conc:<3} {r.rate:7.1f} msg/s", file=sys.stderr, flush=True)
        report = render(results, args, time.time() - started)
        if LAST_4XX:
            report += "\nTemporary (4xx) replies seen: " + "; ".join(f"{n} x {t}" for t, n in LAST_4XX.items()) + "\n"
            warnings: dict[str, int] = {}
            for _, postfix, _m in systems:
                for line in postfix.log().splitlines():
                    if "warning:" in line and "milter" in line:
                        key = re.sub(r"\[\d+\]|[0-9A-F]{10,}", "", line.split("warning:", 1)[1]).strip()[:120]
                        warnings[key] = warnings.get(key, 0) + 1
            report += "".join(f"- Postfix: {n} x {w}\n" for w, n in warnings.items())
        print(report)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"throughput-{time.strftime('%Y-%m-%d')}.md").write_text(report)
        lost = sum(r.sent - r.accepted - r.rejected - r.deferred for r in results)
        undelivered = sum(r.accepted - (r.delivered_in_log or 0) for r in results)
        return 1 if lost or undelivered > 0 else 0
    finally:
        for part in reversed(parts):
            part.stop()
        if args.keep:
            print(f"logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def render(results: list[RunResult], args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# Throughput, {time.strftime('%Y-%m-%d %H:%M')} UTC", "",
             f"`python -m bench.throughput --messages {args.messages} --concurrency "
             f"{' '.join(map(str, args.concurrency))} --rounds {args.rounds}{' --tcp' if args.tcp else ''}"
             f"{' --peers' if args.peers else ''}{' --noop' if args.noop else ''} "
             f"--delivery {args.delivery}` "
             f"on {os.cpu_count()} cores, {seconds:.0f} s in all. Corpus ham and spam 50/50; clamd, classifier, "
             f"lists and message log on; accepted mail: {args.delivery} "
             f"({'Postfix virtual delivery into a maildir' if args.delivery == 'maildir' else 'discard transport'}).",
             "",
             "| system | conc. | msg/s | p50 ms | p99 ms | CPU ms/msg (filter + clamd, Redis) | of which clamd "
             "| filter peak RSS MB | filter memory (PSS, all processes) MB "
             "| sent = accepted + rejected + deferred | accepted found delivered |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cpu = f"{r.cpu_ms_per_msg:.2f}" if r.cpu_ms_per_msg is not None else "-"
        scan = f"{r.clamd_cpu_ms:.2f}" if r.clamd_cpu_ms else "-"
        rss = f"{r.milter_rss_mb:.0f}" if r.milter_rss_mb is not None else "-"
        pss = f"{r.filter_pss_mb:.0f}" if r.filter_pss_mb is not None else "-"
        lines.append(f"| {r.label} | {r.concurrency} | {r.rate:.1f} | {r.pct(0.5):.1f} | {r.pct(0.99):.1f} | {cpu} "
                     f"| {scan} | {rss} | {pss} | {r.sent} = {r.accepted} + {r.rejected} + {r.deferred} "
                     f"| {r.delivered_in_log}/{r.accepted} |")
    lines += ["", "Ratios (mean msg/s of each system over Postfix alone at the same concurrency):", ""]
    for conc in args.concurrency:
        base = statistics.mean(r.rate for r in results if r.concurrency == conc and r.label == "Postfix alone")
        for label in dict.fromkeys(r.label for r in results if r.label != "Postfix alone"):
            rate = statistics.mean(r.rate for r in results if r.concurrency == conc and r.label == label)
            lines.append(f"- c={conc}: {label} {rate:.1f} msg/s = {rate / base:.2f}x of Postfix alone ({base:.1f})")
    peers = [label for label in (RSPAMD_FULL, RSPAMD) if any(r.label == label for r in results)]
    if peers:
        lines += ["", "Stronghold over each rspamd configuration (mean msg/s, same run):", ""]
        for conc in args.concurrency:
            ours = statistics.mean(r.rate for r in results if r.concurrency == conc and r.label == OURS)
            for peer in peers:
                theirs = statistics.mean(r.rate for r in results if r.concurrency == conc and r.label == peer)
                lines.append(f"- c={conc}: {ours / theirs:.2f}x {peer} ({ours:.1f} vs {theirs:.1f} msg/s)")
        lines += ["", "rspamd stops checking once a message reaches its reject score (the full one then skips "
                  "clamd), and a rejected message costs its Postfix no delivery: compare the accepted and "
                  "rejected columns above beside these ratios."]
    deferred = {label: sum(r.deferred for r in results if r.label == label) for label in dict.fromkeys(
        r.label for r in results)}
    lines += [f"\n**{label}: {n} message(s) deferred** (4xx): its figures are not those of a working filter"
              for label, n in deferred.items() if n]
    return "\n".join(lines + goals(results)) + "\n"


OURS, ALONE = "Postfix + Stronghold (unix)", "Postfix alone"
RSPAMD = "Postfix + rspamd 3.4 local rules (unix)"
RSPAMD_FULL = "Postfix + rspamd 3.4 + clamd + Bayes (unix)"
CLAMD_ONLY = "Postfix + clamd only, native engine (unix)"  # --noop: a filter that only scans


def goals(results: list[RunResult]) -> list[str]:
    """The goals of the benchmark issue, each with the figure measured in this run."""
    def mean(label: str, conc: int, get) -> float | None:
        values = [get(r) for r in results if r.label == label and r.concurrency == conc and get(r) is not None]
        return statistics.mean(values) if values else None

    def rate(label: str, conc: int) -> float | None:
        return mean(label, conc, lambda r: r.rate)

    rows: list[tuple[str, str, bool]] = []
    concs = sorted({r.concurrency for r in results})
    for conc in concs:
        ours, full = rate(OURS, conc), rate(RSPAMD_FULL, conc)
        if ours and full:
            rows.append((f"c={conc}: ahead of rspamd with antivirus + Bayes", f"{ours / full:.2f}x", ours > full))
    for conc in (8, 32):
        ours, strict = rate(OURS, conc), rate(RSPAMD, conc)
        if ours and strict:
            rows.append((f"c={conc}: ahead of rspamd with local rules only", f"{ours / strict:.2f}x", ours > strict))
    ours_runs = [r for r in results if r.label.startswith("Postfix + Stronghold") and r.concurrency > 1]
    cpu = [r.cpu_ms_per_msg for r in ours_runs if r.cpu_ms_per_msg is not None]
    scans = [r.clamd_cpu_ms for r in ours_runs if r.clamd_cpu_ms is not None]
    if cpu:
        of_which = f" (of which clamd {min(scans):.2f}-{max(scans):.2f})" if scans else ""
        floor = [r.cpu_ms_per_msg for r in results
                 if r.label == CLAMD_ONLY and r.concurrency > 1 and r.cpu_ms_per_msg is not None]
        if floor:  # the same goal's yardstick, this run: a filter on our engine doing nothing but clamd
            of_which += f"; clamd only, native engine: {min(floor):.2f}-{max(floor):.2f} ms"
        rows.append(("milter + clamd CPU at most 1.2 ms/msg (c>1)", f"{min(cpu):.2f}-{max(cpu):.2f} ms{of_which}",
                     max(cpu) <= 1.2))
    p99_ours, p99_alone = mean(OURS, 8, lambda r: r.pct(0.99)), mean(ALONE, 8, lambda r: r.pct(0.99))
    if p99_ours is not None and p99_alone is not None:
        rows.append(("c=8: p99 at most Postfix alone + 20 ms", f"{p99_ours:.0f} vs {p99_alone:.0f} ms",
                     p99_ours <= p99_alone + 20))
    rss = [r.milter_rss_mb for r in results if r.label.startswith("Postfix + Stronghold") and r.milter_rss_mb]
    if rss:
        rows.append(("milter peak RSS under 150 MB", f"{max(rss):.0f} MB", max(rss) < 150))
    lost = sum(r.sent - r.accepted - r.rejected - r.deferred for r in results)
    undelivered = sum(r.accepted - (r.delivered_in_log or 0) for r in results)
    rows.append(("zero messages lost", f"{lost} lost, {undelivered} accepted but not delivered",
                 lost == 0 and undelivered == 0))
    return ["", "Goals (benchmark issue), measured in this run:", "", "| goal | measured | met |", "|---|---|---|",
            *(f"| {goal} | {figure} | {'yes' if met else '**no**'} |" for goal, figure, met in rows)]


if __name__ == "__main__":
    sys.exit(main())
