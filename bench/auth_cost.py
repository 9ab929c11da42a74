"""What sender authentication costs ordinary mail: the engine with and without an authenticator.

    python -m bench.auth_cost [--messages 2000] [--rounds 3]

Ordinary mail is mail no allow entry matches: it must pay no DNS lookup and
next to no CPU.  Test-split corpus messages go through ``gather`` + ``decide``
(no scanner, a fixed score, the list entries of ``bench.throughput``) with no
authenticator (A) and with one (B), alternately; the authenticator's resolver
points at a closed port and counts what it is asked, so a lookup would show.
Then 200 of them with an allow entry matching their sender (C): the lookups
happen, and with no server answering each waits out its timeout (0.5 s here),
the bound a dead resolver puts on such mail.
Last (D), the same 200 with a DNS server on loopback answering (every name but
the test zone's missing, with an SOA): CPU per message once the answers are
cached, with the answers ``Dns`` keeps in front of dnspython's cache and with
dnspython's cache alone, alternately.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from stronghold.authres import Authenticator
from stronghold.classifier import Score
from stronghold.dnscache import Dns
from stronghold.engine import gather
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.verdict import Envelope

ROOT = Path(__file__).resolve().parent.parent


class CountingDns(Dns):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1",), 9, 0.5)  # the discard port: nothing answers
        self.asked = 0

    def query(self, name: str, qtype: str, timeout: float | None = None) -> list[Any]:
        self.asked += 1
        return super().query(name, qtype, timeout)


class CacheOnlyDns(Dns):
    """dnspython's cache alone: nothing kept in front of it (the comparison for D)."""

    def _keep(self, key: tuple[str, str], expires: float | None, records: tuple[Any, ...]) -> None:
        return None


class FixedModel:
    spam_threshold = 0.9

    def score(self, tokens: set[str]) -> Score:
        return Score(0.1, ())


def run(items: list[tuple[Envelope, Any, bytes]], index: ListIndex, auth: Authenticator | None,
        clock: Any = time.perf_counter) -> float:
    model, policy = FixedModel(), Policy()
    started = clock()
    for env, msg, _raw in items:
        found = gather(msg, None, None, lambda: model, lambda: index, tokens=set(),  # type: ignore[arg-type,return-value]
                       envelope=env, authenticator=auth)
        decide(env, msg, found, policy)
    return (clock() - started) / len(items) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corpus = ROOT / "corpus" / "data"
    names = [line.split(" ", 1)[1] for line in (corpus / "index.test").read_text().split("\n") if " " in line]
    items = []
    for i, name in enumerate(names[:args.messages]):
        raw = (corpus / name).read_bytes()
        items.append((Envelope("list@lists.example", (f"user{i % 20}@example.com",), "127.0.0.1", "mx.lists.example"),
                      parse(raw), raw))
    entries = [ListEntry(i, f"user{i}@example.com", "allow", f"sender{i}@load.example") for i in range(0, 20, 3)]
    entries.append(ListEntry(100, "user1@example.com", "block", "@blocked.example"))
    index = ListIndex(entries)
    dns = CountingDns()
    auth = Authenticator("check", "bench.example", dns)
    a, b = [], []
    for _ in range(args.rounds):
        a.append(run(items, index, None))
        b.append(run(items, index, auth))
    print(f"ordinary mail, {len(items)} messages x {args.rounds} rounds (best round):")
    print(f"  A no authenticator:   {min(a):7.1f} us/msg")
    print(f"  B with authenticator: {min(b):7.1f} us/msg  (+{min(b) - min(a):.1f} us; DNS lookups: {dns.asked})")
    matching = ListIndex([*entries, ListEntry(200, None, "allow", "list@lists.example")])
    few = items[:200]
    c = run(few, matching, auth)
    print(f"  C an allow entry matches every sender: {c / 1000:7.2f} ms/msg, DNS lookups {dns.asked} "
          f"(SPF and DMARC, DKIM keys where signed: each waits out its 0.5 s timeout)")
    cached_lookups(few, matching, args.rounds)
    return 0


def cached_lookups(items: list[tuple[Envelope, Any, bytes]], index: ListIndex, rounds: int) -> None:
    """D: the DNS answering; CPU per message once every answer is cached."""
    from tests.harness.dnsserver import LoopbackDns

    server = LoopbackDns().start()
    server.zone.negative_ttl = 300
    try:
        kept = Authenticator("check", "bench.example", Dns(("127.0.0.1",), server.port, 1.0))
        alone = Authenticator("check", "bench.example", CacheOnlyDns(("127.0.0.1",), server.port, 1.0))
        run(items, index, kept)
        run(items, index, alone)  # both caches warm
        times: dict[str, list[float]] = {"kept": [], "alone": []}
        for _ in range(rounds):
            times["kept"].append(run(items, index, kept, time.process_time))
            times["alone"].append(run(items, index, alone, time.process_time))
    finally:
        server.stop()
    print(f"  D the same, a DNS server answering, answers cached (CPU, best of {rounds}): "
          f"{min(times['kept']):7.1f} us/msg with answers kept in front of dnspython's cache, "
          f"{min(times['alone']):7.1f} with its cache alone")


if __name__ == "__main__":
    raise SystemExit(main())
