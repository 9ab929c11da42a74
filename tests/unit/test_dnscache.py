"""The answers ``Dns`` keeps in front of dnspython's cache: kept exactly as long as the DNS
says (a record's TTL, a missing name's SOA), never a failure, by name whatever its case.
Against a real DNS server on loopback (tests/harness/dnsserver.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from stronghold import dnscache
from stronghold.dnscache import Dns, DnsTempError
from tests.harness.dnsserver import LoopbackDns


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackDns]:
    dns = LoopbackDns().start()  # our own: the TTLs here are changed (each test its own names)
    dns.zone.ttl = 1
    dns.zone.negative_ttl = 1
    yield dns
    dns.stop()


def _dns(server: LoopbackDns) -> Dns:
    return Dns(("127.0.0.1",), server.port, 1.0)


def _wait_past(seconds: float) -> None:
    time.sleep(seconds + 0.3)


def test_a_record_is_kept_for_its_ttl_then_asked_again(server: LoopbackDns) -> None:
    resolver = _dns(server)
    server.zone.txt["a.test.example"] = ["one"]
    assert resolver.txt("a.test.example") == [b"one"]
    server.zone.txt["a.test.example"] = ["two"]
    assert resolver.txt("A.Test.Example") == [b"one"]  # kept, whatever the case of the name
    assert server.lookups("a.test.example") == 1
    _wait_past(server.zone.ttl)
    assert resolver.txt("a.test.example") == [b"two"]
    assert server.lookups("a.test.example") == 2


def test_answers_are_kept_in_front_of_dnspythons_cache(server: LoopbackDns) -> None:
    """Asking dnspython's cache costs ~50 us per lookup: the answer is kept before it."""
    resolver = _dns(server)
    server.zone.txt["front.test.example"] = ["kept"]
    server.zone.ttl = server.zone.negative_ttl = 60  # long enough for a slow machine
    try:
        assert resolver.txt("front.test.example") == [b"kept"]
        assert resolver.txt("nothing.test.example") == []
    finally:
        server.zone.ttl = server.zone.negative_ttl = 1
    resolver.resolver().cache.flush()  # dnspython's cache forgets: only ours can answer now
    server.zone.txt["front.test.example"] = ["changed"]
    server.zone.txt["nothing.test.example"] = ["now here"]
    assert resolver.txt("front.test.example") == [b"kept"]
    assert resolver.txt("nothing.test.example") == []
    assert server.lookups("front.test.example") == 1 and server.lookups("nothing.test.example") == 1


def test_each_record_type_is_kept_apart(server: LoopbackDns) -> None:
    resolver = _dns(server)
    server.zone.txt["b.test.example"] = ["text"]
    server.zone.a["b.test.example"] = ["192.0.2.5"]
    assert resolver.txt("b.test.example") == [b"text"]
    assert [r.address for r in resolver.query("b.test.example", "A")] == ["192.0.2.5"]


def test_a_missing_name_is_kept_as_long_as_its_soa_says(server: LoopbackDns) -> None:
    resolver = _dns(server)
    assert resolver.txt("late.test.example") == []
    server.zone.txt["late.test.example"] = ["now here"]
    assert resolver.txt("late.test.example") == []  # the SOA said: do not ask again for a second
    assert server.lookups("late.test.example") == 1
    _wait_past(server.zone.negative_ttl or 0)
    assert resolver.txt("late.test.example") == [b"now here"]


def test_a_failed_lookup_is_not_kept(server: LoopbackDns) -> None:
    resolver = _dns(server)
    server.zone.servfail.add("flaky.test.example")
    server.zone.txt["flaky.test.example"] = ["v=spf1 -all"]
    with pytest.raises(DnsTempError):
        resolver.txt("flaky.test.example")
    server.zone.servfail.clear()
    assert resolver.txt("flaky.test.example") == [b"v=spf1 -all"]  # asked again at once


def test_the_kept_answers_are_bounded(server: LoopbackDns, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnscache, "KEPT_NAMES", 5)
    resolver = _dns(server)
    for i in range(12):
        server.zone.txt[f"n{i}.test.example"] = [str(i)]
        assert resolver.txt(f"n{i}.test.example") == [str(i).encode()]
        assert 1 <= len(resolver._kept) <= 5
    assert resolver.txt("n11.test.example") == [b"11"]
