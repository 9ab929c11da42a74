"""DNS for sender authentication: dnspython with timeouts and a per-process cache.

One ``Dns`` per worker process (built lazily, rebuilt after a fork), talking
to the configured name servers (or the system's).  Answers are cached by
dnspython for their TTL, negative ones included; in front of that, the
records each name gave are kept until the same expiry, because asking
dnspython's cache costs ~70-90 us of CPU per lookup (its resolution
machinery, an exception for each name that does not exist) and an
authenticated message makes several.  A lookup that times out or that no
server answers raises ``DnsTempError``; a name or record that does not exist
is an empty answer.  Adapters here give pyspf and dkimpy the same resolver.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import spf

log = logging.getLogger(__name__)


KEPT_NAMES = 10_000  # (name, type) answers kept in front of dnspython's cache, per process


class DnsTempError(Exception):
    """A lookup failed for now (timeout, SERVFAIL, no server reachable)."""


class Dns:
    """A resolver with a cache; safe to share between threads of one process."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53, timeout: float = 2.0) -> None:
        self.nameservers = tuple(nameservers)
        self.port = port
        self.timeout = timeout
        self._resolver: dns.resolver.Resolver | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], tuple[float, tuple[Any, ...]]] = {}  # -> (expires, records)

    def resolver(self) -> dns.resolver.Resolver:
        with self._lock:
            if self._resolver is None or self._pid != os.getpid():  # a cache of our own after fork
                if self.nameservers:
                    res = dns.resolver.Resolver(configure=False)
                    res.nameservers = list(self.nameservers)
                else:
                    res = dns.resolver.Resolver()
                res.port = self.port
                res.timeout = self.timeout
                res.lifetime = self.timeout
                res.cache = dns.resolver.LRUCache(10_000)
                self._resolver, self._pid = res, os.getpid()
            return self._resolver

    def query(self, name: str, qtype: str, timeout: float | None = None) -> list[Any]:
        """The records of ``qtype`` at ``name``; [] when there are none."""
        key = (name.lower(), qtype.upper())
        kept = self._kept.get(key)
        if kept is not None and kept[0] > time.time():
            return list(kept[1])
        try:
            answer = self.resolver().resolve(name, qtype, lifetime=min(timeout or self.timeout, self.timeout),
                                             search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            self._keep(key, self._negative_expiry(exc), ())
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTempError(f"{qtype} {name}: {exc.__class__.__name__}") from exc
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
            return []  # not a name that can exist
        except dns.exception.DNSException as exc:  # any other failure of the lookup itself
            raise DnsTempError(f"{qtype} {name}: {exc.__class__.__name__}") from exc
        records = tuple(answer.rrset) if answer.rrset is not None else ()
        self._keep(key, answer.expiration, records)
        return list(records)

    def _negative_expiry(self, exc: dns.resolver.NXDOMAIN) -> float | None:
        """When dnspython's cache forgets that the name does not exist (the SOA's TTL, or its
        own default when the answer carried none); None when it did not keep it."""
        cache = self.resolver().cache
        found = [cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN)) for qname in exc.qnames()]
        expiries = [answer.expiration for answer in found if answer is not None]
        return min(expiries) if expiries else None

    def _keep(self, key: tuple[str, str], expires: float | None, records: tuple[Any, ...]) -> None:
        if expires is None or expires <= time.time():
            return
        if len(self._kept) >= KEPT_NAMES:  # full: start again (the resolver's own cache remains)
            self._kept.clear()
        self._kept[key] = (expires, records)

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record at ``name``, its strings joined."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]


# -- pyspf: its one hook is the module function spf.DNSLookup ---------------------
# It is set once to a dispatcher that asks the Dns of the current thread's
# check, so each check uses its own resolver settings.

_current = threading.local()


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    resolver: Dns | None = getattr(_current, "dns", None)
    if resolver is None:
        raise spf.TempError("DNS: no resolver set for this check")
    try:
        records = resolver.query(name, qtype, timeout)
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    out: list[Any] = []
    for r in records:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), r.address))
        elif qtype == "MX":
            out.append(((name, qtype), (r.preference, r.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), r.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), r.strings))
    return out


spf.DNSLookup = _spf_lookup


def spf_check(resolver: Dns, ip: str, sender: str, helo: str) -> tuple[str, str]:
    """(result, explanation) of SPF for ``sender`` (or the HELO name when it is null)."""
    _current.dns = resolver
    try:
        query = spf.query(i=ip, s=sender, h=helo, timeout=resolver.timeout, querytime=resolver.timeout * 3)
        result, _code, text = query.check()
    finally:
        _current.dns = None
    return str(result), str(text)


def dkim_txt(resolver: Dns) -> Any:
    """A dkimpy ``dnsfunc`` over ``resolver``: the key record, or None; dkimpy's
    DnsTimeoutError (its temporary failure) on a failed lookup."""
    import dkim

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = resolver.txt(text)
        except DnsTempError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        return records[0] if records else None
    return lookup
