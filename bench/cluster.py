#!/usr/bin/env python3
"""Scale-out: several mail nodes (Postfix + milter, each its own data_dir) on one PostgreSQL.

    python -m bench.cluster [--nodes 1 2 4] [--messages 800] [--concurrency 16] [--workers 2]

Everything runs on this machine on loopback: one PostgreSQL (with
pg_stat_statements), one clamd shared by the nodes, and per node a Postfix and
a ``stronghold milter`` whose data_dir is its own and whose database_url is the
shared PostgreSQL.  For each node count the same corpus mix is spread over the
nodes' Postfix ports and the run reports: total msg/s, PostgreSQL connections
(peak, from pg_stat_activity), PostgreSQL CPU per message (the postmaster and
its children, from /proc), transactions per message (pg_stat_database) and
statements per message (pg_stat_statements).

Then, with the most nodes:
- list-change propagation: a block entry is added through the store (what the
  web UI calls) and every node is probed by SMTP until it refuses the sender
  at RCPT; the time from the commit to each node's first refusal is reported;
- a PostgreSQL restart mid-run (immediate stop, a few seconds down, start):
  every message is resent while it gets 4xx (bounded), and each message
  accepted must be found delivered exactly once in the nodes' maildirs.

Writes a Markdown report to stdout and bench/results/cluster-<date>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.throughput import TICKS, load_messages, send_one
from devtools.localstack import TEST_SIGNATURES, Clamd, Postfix, free_port
from stronghold.store import entries
from stronghold.store.db import Store
from tests.harness.milterproc import MilterProcess
from tests.harness.postgres import PostgresCluster, _bin

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BLOCKED = "late@blocked-now.example"


class StatsCluster(PostgresCluster):
    """The test harness's throwaway cluster, with pg_stat_statements loaded."""

    def start_server(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.home / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c shared_preload_libraries=pg_stat_statements -c max_connections=200", "start")

    def postgres_pids(self) -> list[int]:
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return []
        pids = [master]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        return pids

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.postgres_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICKS
            except (OSError, IndexError, ValueError):
                continue
        return total


@dataclass
class Node:
    home: Path
    postfix: Postfix
    milter: MilterProcess

    def delivered_ids(self) -> list[str]:
        ids = []
        for folder in ("new", "cur"):
            for path in (self.home / "postfix" / "mail" / "catchall" / folder).glob("*"):
                head = path.read_bytes()[:4096]
                at = head.find(b"X-Bench-Id: ")
                if at >= 0:
                    ids.append(head[at + 12:head.index(b"\n", at)].strip().decode())
        return ids


def start_node(home: Path, clamd: Clamd, db_url: str, workers: int, parts: list) -> Node:
    (home / "milter").mkdir(parents=True)
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    os.chmod(home / "milter", 0o755)  # noqa: S103
    settings: dict[str, object] = {
        "data_dir": str(home / "milter"), "models_dir": str(ROOT / "models"),
        "milter_socket": f"unix:{home / 'milter' / 'milter.sock'}", "clamd_socket": clamd.address,
        "database_url": db_url, "milter_workers": workers}
    milter = MilterProcess(home, settings)
    milter.start()
    parts.append(milter)
    postfix = Postfix(home / "postfix", free_port(), milter=milter.address)
    postfix.start()
    parts.append(postfix)
    return Node(home, postfix, milter)


class DbWatch:
    """pg_stat_* snapshots and a thread sampling the connection count."""

    def __init__(self, pg: StatsCluster, dbname: str) -> None:
        self.pg, self.dbname = pg, dbname
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _conn(self) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.pg.port, user="postgres", dbname=self.dbname,
                               autocommit=True, connect_timeout=5)

    def counters(self) -> tuple[int, int]:
        """(transactions committed + rolled back, statements executed) in our database so far."""
        time.sleep(1.2)  # backends report their counters at most once a second
        with self._conn() as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            xacts = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                                 (self.dbname,)).fetchone()
            calls = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
                                 "ON d.oid = s.dbid WHERE d.datname = %s AND s.query NOT ILIKE '%%pg_stat%%'",
                                 (self.dbname,)).fetchone()
        return int(xacts[0] if xacts else 0), int(calls[0] if calls else 0)

    def start(self) -> None:
        self.peak = 0
        self._stop.clear()

        def sample() -> None:
            with self._conn() as conn:
                while not self._stop.wait(0.25):
                    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                       "pg_backend_pid()", (self.dbname,)).fetchone()
                    self.peak = max(self.peak, int(row[0]) if row else 0)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.peak


async def spread(nodes: list[Node], messages: list[bytes], concurrency: int) -> list[tuple[int, int, float]]:
    """Send ``messages`` round-robin over the nodes; (index, SMTP code, seconds) per message."""
    queue = list(enumerate(messages))
    out: list[tuple[int, int, float]] = []

    async def worker() -> None:
        while queue:
            i, data = queue.pop()
            node = nodes[i % len(nodes)]
            try:
                code, secs = await send_one(node.postfix.port, f"sender{i % 50}@load.example",
                                            f"user{i % 20}@example.com", data)
            except (ConnectionError, OSError):
                code, secs = 421, 0.0
            out.append((i, code, secs))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def tagged(messages: list[bytes], prefix: str) -> list[bytes]:
    return [f"X-Bench-Id: {prefix}-{i}\r\n".encode() + m for i, m in enumerate(messages)]


def measure(nodes: list[Node], pg: StatsCluster, watch: DbWatch, messages: list[bytes],
            concurrency: int) -> dict[str, float]:
    asyncio.run(spread(nodes, messages[:40], 4))  # warm up: pools, list caches, model pages
    xacts0, calls0 = watch.counters()
    cpu0 = pg.cpu_seconds()
    watch.start()
    started = time.perf_counter()
    results = asyncio.run(spread(nodes, messages, concurrency))
    seconds = time.perf_counter() - started
    peak = watch.stop()
    xacts1, calls1 = watch.counters()  # waits a moment: the last batched message-log writes land
    cpu = pg.cpu_seconds() - cpu0
    n = len(results)
    return {"nodes": len(nodes), "sent": n, "msg_s": n / seconds, "peak_conns": peak,
            "db_cpu_ms": cpu * 1000 / n,
            "xacts": (xacts1 - xacts0) / n, "statements": (calls1 - calls0) / n,
            "accepted": sum(1 for _, c, _ in results if c < 300),
            "rejected": sum(1 for _, c, _ in results if c >= 500),
            "deferred": sum(1 for _, c, _ in results if 400 <= c < 500)}


def propagation(nodes: list[Node], db_url: str, timeout: float = 15.0) -> list[float | None]:
    """Seconds from the block entry's commit to each node's first RCPT refusal (None: not within timeout)."""
    store = Store(db_url)
    try:
        with store.session() as s:
            entries.add_entry(s, "user3@example.com", "block", BLOCKED)
    finally:
        store.dispose()
    committed = time.monotonic()
    seen: list[float | None] = [None] * len(nodes)
    probe = b"Subject: probe\r\n\r\nprobe\r\n"
    while any(t is None for t in seen) and time.monotonic() - committed < timeout:
        for k, node in enumerate(nodes):
            if seen[k] is None:
                code, _ = asyncio.run(send_one(node.postfix.port, BLOCKED, "user3@example.com", probe))
                if code == 550:
                    seen[k] = time.monotonic() - committed
        time.sleep(0.05)
    return seen


def restart_run(nodes: list[Node], pg: StatsCluster, messages: list[bytes], concurrency: int,
                down: float = 3.0, retry_for: float = 90.0, after: float = 0.5) -> dict[str, object]:
    """Load, a PostgreSQL immediate stop and start mid-run, resends of every 4xx; then the accounting."""
    msgs = tagged(messages, "restart")
    final: dict[int, int] = {}
    tempfails = 0

    def outage() -> None:
        time.sleep(after)
        pg.stop_server()
        time.sleep(down)
        pg.start_server()

    t = threading.Thread(target=outage)
    t.start()
    pending = list(range(len(msgs)))
    deadline = time.monotonic() + retry_for
    while pending and time.monotonic() < deadline:
        batch = [msgs[i] for i in pending]
        results = asyncio.run(spread(nodes, batch, concurrency))
        again = []
        for j, code, _ in results:
            i = pending[j]
            if 400 <= code < 500:
                tempfails += 1
                again.append(i)
            else:
                final[i] = code
        pending = sorted(again)
        if pending:
            time.sleep(0.5)
    t.join()
    accepted = {f"restart-{i}" for i, c in final.items() if c < 300}
    rejected = {f"restart-{i}" for i, c in final.items() if c >= 500}
    found: dict[str, int] = {}
    wait_until = time.monotonic() + 60
    while time.monotonic() < wait_until:
        found = {}
        for node in nodes:
            for mid in node.delivered_ids():
                if mid.startswith("restart-"):
                    found[mid] = found.get(mid, 0) + 1
        if set(found) >= accepted:
            break
        time.sleep(0.5)
    return {"sent": len(msgs), "tempfails": tempfails, "accepted": len(accepted), "rejected": len(rejected),
            "never_final": len(pending), "missing": len(accepted - set(found)),
            "duplicates": sum(1 for v in found.values() if v > 1),
            "delivered_not_accepted": len(set(found) - accepted)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--messages", type=int, default=800, help="messages per measured run")
    parser.add_argument("--concurrency", type=int, default=16, help="SMTP clients in all, spread over the nodes")
    parser.add_argument("--workers", type=int, default=2, help="milter workers per node")
    args = parser.parse_args()
    if not (ROOT / "models" / "model.joblib").exists():
        print("no model: run make model", file=sys.stderr)
        return 1
    home = Path(tempfile.mkdtemp(prefix="stronghold-cluster-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter sockets
    parts: list = []
    pg = StatsCluster()
    started = time.time()
    try:
        pg.start()
        db_url = pg.create_database("stronghold")
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="stronghold",
                             autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        store = Store(db_url)
        store.upgrade()
        with store.session() as s:  # the same list work as bench.throughput
            for i in range(0, 20, 3):
                entries.add_entry(s, f"user{i}@example.com", "allow", f"sender{i}@load.example")
            entries.add_entry(s, "user1@example.com", "block", "@blocked.example")
        store.dispose()
        clamd = Clamd(home / "clamd", TEST_SIGNATURES)
        clamd.start()
        parts.append(clamd)
        watch = DbWatch(pg, "stronghold")
        messages = load_messages(args.messages)
        nodes: list[Node] = []
        rows = []
        for count in sorted(args.nodes):
            while len(nodes) < count:
                nodes.append(start_node(home / f"node{len(nodes) + 1}", clamd, db_url, args.workers, parts))
            row = measure(nodes, pg, watch, messages, args.concurrency)
            rows.append(row)
            print(f"  {count} node(s): {row['msg_s']:.1f} msg/s, {row['peak_conns']} connections, "
                  f"{row['db_cpu_ms']:.3f} ms PostgreSQL CPU/msg", file=sys.stderr, flush=True)
        delays = propagation(nodes, db_url)
        outage = restart_run(nodes, pg, messages, args.concurrency)
        top = top_statements(pg)
        report = render(args, rows, delays, outage, time.time() - started) + top
        print(report)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"cluster-{time.strftime('%Y-%m-%d')}.md").write_text(report)
        ok = (all(d is not None for d in delays) and not outage["missing"] and not outage["duplicates"]
              and not outage["never_final"] and not outage["delivered_not_accepted"])
        return 0 if ok else 1
    finally:
        for part in reversed(parts):
            part.stop()
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)


def top_statements(pg: StatsCluster, n: int = 6) -> str:
    """The statements the nodes ran most, from pg_stat_statements (whole run)."""
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="stronghold",
                         autocommit=True) as conn:
        rows = conn.execute("SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
                            "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                            "WHERE d.datname = 'stronghold' AND query NOT ILIKE '%%pg_stat%%' "
                            "ORDER BY total_exec_time DESC LIMIT %s", (n,)).fetchall()
    lines = ["", "Statements by total execution time (pg_stat_statements, whole run):", "",
             "| calls | total ms | statement |", "|---|---|---|"]
    lines += [f"| {calls} | {ms:.0f} | `{query.replace('|', '/')}` |" for calls, ms, query in rows]
    return "\n".join(lines) + "\n"


def render(args: argparse.Namespace, rows: list[dict[str, float]], delays: list[float | None],
           outage: dict[str, object], seconds: float) -> str:
    lines = [f"# Scale-out on one PostgreSQL, {time.strftime('%Y-%m-%d %H:%M')} UTC", "",
             f"`python -m bench.cluster --nodes {' '.join(map(str, args.nodes))} --messages {args.messages} "
             f"--concurrency {args.concurrency} --workers {args.workers}` on {os.cpu_count()} cores, "
             f"{seconds:.0f} s in all. Every node (Postfix + milter with {args.workers} workers, own data_dir) "
             "runs on this one machine with the shared PostgreSQL and clamd, so msg/s is bounded by the "
             "machine's cores, not by the database: the database columns are the point.", "",
             "| nodes | msg/s (all nodes) | peak PostgreSQL connections | PostgreSQL CPU ms/msg "
             "| transactions/msg | statements/msg | accepted + rejected + deferred |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['nodes']} | {r['msg_s']:.1f} | {r['peak_conns']} | {r['db_cpu_ms']:.3f} "
                     f"| {r['xacts']:.2f} | {r['statements']:.2f} "
                     f"| {r['accepted']} + {r['rejected']} + {r['deferred']} |")
    got = [d for d in delays if d is not None]
    lines += ["", f"List change (a block added through the store, as the web UI does) refused at RCPT by "
              f"{len(got)} of {len(delays)} nodes; delay per node: "
              + ", ".join(f"{d:.2f} s" if d is not None else "not within 15 s" for d in delays)
              + (f" (max {max(got):.2f} s)" if got else ""), "",
              f"PostgreSQL immediate stop for 3 s, 0.5 s into a run of {outage['sent']} messages, resending "
              f"every 4xx: {outage['tempfails']} temporary failures along the way; finally "
              f"{outage['accepted']} accepted + {outage['rejected']} rejected, {outage['never_final']} never "
              f"answered for good; accepted but not delivered: {outage['missing']}; delivered twice: "
              f"{outage['duplicates']}; delivered but not accepted: {outage['delivered_not_accepted']}."]
    if rows:
        cpu = statistics.mean(r["db_cpu_ms"] for r in rows)
        lines += ["", f"Mean PostgreSQL CPU {cpu:.3f} ms per message: one database core at that rate serves "
                  f"{1000 / cpu:,.0f} msg/s of mail nodes." if cpu > 0 else ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
