"""A DNS server on loopback (dnslib) serving test zones: SPF, DKIM keys, DMARC.

Records live in a dict the test can change; ``silent`` makes the server drop
every query (a server that is down as far as a resolver can tell: it waits,
then times out).  ``queries`` counts what was asked, so a test can check that
ordinary mail caused no lookup at all.
"""

from __future__ import annotations

import errno
import subprocess
import threading
from base64 import b64encode
from collections import Counter
from pathlib import Path

import dnslib
from dnslib.server import BaseResolver, DNSError, DNSLogger, DNSServer


class Zone(BaseResolver):
    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}
        self.a: dict[str, list[str]] = {}
        self.servfail: set[str] = set()
        self.silent = False
        self.ttl = 60  # of every record served
        self.negative_ttl: int | None = None  # set: a missing name's reply carries an SOA with it
        self.queries: Counter[str] = Counter()
        self._lock = threading.Lock()

    def resolve(self, request: dnslib.DNSRecord, handler: object) -> dnslib.DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        qtype = dnslib.QTYPE[request.q.qtype]
        with self._lock:
            self.queries[f"{qtype} {name}"] += 1
            if self.silent:
                raise DNSError("silent")  # dnslib sends nothing back
            txt = list(self.txt.get(name, ()))
            a = list(self.a.get(name, ()))
        reply = request.reply()
        if name in self.servfail:
            reply.header.rcode = dnslib.RCODE.SERVFAIL
            return reply
        if qtype == "TXT":
            for value in txt:
                chunks = [value[i:i + 250] for i in range(0, len(value), 250)] or [""]
                reply.add_answer(dnslib.RR(name, dnslib.QTYPE.TXT, rdata=dnslib.TXT(chunks), ttl=self.ttl))
        elif qtype == "A":
            for value in a:
                reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(value), ttl=self.ttl))
        if not reply.rr and name not in self.txt and name not in self.a:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
            if self.negative_ttl is not None:
                soa = dnslib.SOA("ns.test.example", "hostmaster.test.example",
                                 (1, 3600, 600, 86400, self.negative_ttl))
                reply.add_auth(dnslib.RR("test.example", dnslib.QTYPE.SOA, rdata=soa, ttl=self.negative_ttl))
        return reply


class LoopbackDns:
    """UDP and TCP on one free loopback port."""

    def __init__(self) -> None:
        self.zone = Zone()
        self.keys: dict[str, bytes] = {}
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda _: None)
        for _attempt in range(20):  # the UDP port the system picks may be taken for TCP by someone else
            self.udp = DNSServer(self.zone, address="127.0.0.1", port=0, logger=quiet)
            self.port = self.udp.server.server_address[1]
            try:
                self.tcp = DNSServer(self.zone, address="127.0.0.1", port=self.port, tcp=True, logger=quiet)
                break
            except OSError as exc:
                self.udp.server.server_close()
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise OSError(errno.EADDRINUSE, "no loopback port free for both UDP and TCP")

    def start(self) -> LoopbackDns:
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()
        self.udp.server.server_close()
        self.tcp.server.server_close()

    def lookups(self, name_part: str = "") -> int:
        return sum(n for q, n in self.zone.queries.items() if name_part in q)


def dkim_key(folder: Path, name: str = "dkim") -> tuple[bytes, str]:
    """(PEM private key, the DNS TXT value publishing its public key): RSA 1024 by openssl."""
    pem_path = folder / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(pem_path), "1024"], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(pem_path), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return pem_path.read_bytes(), f"v=DKIM1; k=rsa; p={b64encode(der).decode()}"


SELECTOR = "sel"


def publish_test_zones(dns: LoopbackDns, folder: Path) -> dict[str, bytes]:
    """The test domains; returns each signing domain's private key.

    Postfix hands mail to the milter from 127.0.0.1, so SPF passes where the
    record lists ip4:127.0.0.1.
    """
    z = dns.zone
    keys: dict[str, bytes] = {}
    for domain in ("trusted.example", "mail.trusted.example", "other.example", "strict.example",
                   "xn--bcher-kva.example"):
        pem, txt = dkim_key(folder, domain)
        keys[domain] = pem
        z.txt[f"{SELECTOR}._domainkey.{domain}"] = [txt]
    z.txt["trusted.example"] = ["v=spf1 ip4:127.0.0.1 -all"]
    z.txt["_dmarc.trusted.example"] = ["v=DMARC1; p=reject"]
    z.txt["other.example"] = ["v=spf1 ip4:127.0.0.1 -all"]
    z.txt["strict.example"] = ["v=spf1 ip4:127.0.0.1 -all"]
    z.txt["_dmarc.strict.example"] = ["v=DMARC1; p=none; adkim=s; aspf=s"]
    z.txt["quarantine.example"] = ["v=spf1 -all"]
    z.txt["_dmarc.quarantine.example"] = ["v=DMARC1; p=quarantine"]
    z.txt["fail.example"] = ["v=spf1 -all"]
    z.txt["softfail.example"] = ["v=spf1 ~all"]
    z.txt["neutral.example"] = ["v=spf1 ?all"]
    z.a["none.example"] = ["192.0.2.10"]  # exists, publishes no SPF
    z.servfail.add("temperror.example")
    z.txt["mail.newsletters.example"] = ["v=spf1 ip4:127.0.0.1 -all"]
    z.txt["xn--bcher-kva.example"] = ["v=spf1 ip4:127.0.0.1 -all"]  # bücher.example
    z.txt["_dmarc.xn--bcher-kva.example"] = ["v=DMARC1; p=reject"]
    return keys


def sign(message: bytes, domain: str, keys: dict[str, bytes]) -> bytes:
    """``message`` with a DKIM-Signature of ``domain`` prepended (dkimpy, relaxed/relaxed)."""
    import dkim
    sig = dkim.sign(message, SELECTOR.encode(), domain.encode(), keys[domain],
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + message
