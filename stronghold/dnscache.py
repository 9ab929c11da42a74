"""DNS for sender authentication: dnspython with timeouts and a per-process cache.

One ``Dns`` per worker process (built lazily, rebuilt after a fork), talking
to the configured name servers (or the system's).  Answers are cached by
dnspython for their TTL, negative ones included.  A lookup that times out or
that no server answers raises ``DnsTempError``; a name or record that does
not exist is an empty answer.  Adapters here give pyspf and dkimpy the same
resolver.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import spf

log = logging.getLogger(__name__)


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
        try:
            answer = self.resolver().resolve(name, qtype, lifetime=min(timeout or self.timeout, self.timeout),
                                             search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTempError(f"{qtype} {name}: {exc.__class__.__name__}") from exc
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
            return []  # not a name that can exist
        except dns.exception.DNSException as exc:  # any other failure of the lookup itself
            raise DnsTempError(f"{qtype} {name}: {exc.__class__.__name__}") from exc
        return list(answer.rrset) if answer.rrset is not None else []

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
