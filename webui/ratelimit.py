"""Login throttling with Flask-Limiter, counted in the store so every web node sees the same counts.

Only failed logins count, per client address *and* login name, with a staircase
of windows (a backoff), so an attacker who guesses one account from one address
slows to a few tries a day while the owner, from any other address, still logs
in.  A looser per-address limit slows one address spraying many names.  An IPv6
client counts as its /64 (``counted_as``).  Behind a reverse proxy,
``web_trusted_proxies`` hops of X-Forwarded-For are believed (Werkzeug's ProxyFix),
no more: a client cannot pick its own address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limiter
from limits.storage import Storage

from stronghold.store import ratelimits
from stronghold.store.db import Store

log = logging.getLogger(__name__)
SCHEME = "stronghold+sql"


class SqlStorage(Storage):
    """Flask-Limiter's view of the store's counters (``stronghold.store.ratelimits``)."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        store = options.get("store")
        if not isinstance(store, Store):
            raise ValueError("SqlStorage needs storage_options={'store': Store}")
        self.store = store
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ratelimits.ERRORS

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return ratelimits.incr(self.store, key, expiry, amount)

    def get(self, key: str) -> int:
        row = ratelimits.current(self.store, key)
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = ratelimits.current(self.store, key)
        return row[1] if row else time.time()

    def check(self) -> bool:
        return ratelimits.reachable(self.store)

    def reset(self) -> int | None:
        return ratelimits.reset(self.store)

    def clear(self, key: str) -> None:
        ratelimits.clear(self.store, key)


def client_address() -> str:
    """Who is counted: the client's IPv4 address, or its IPv6 /64 (one host or LAN holds a whole
    /64, so a guesser could otherwise take a fresh address, and a fresh budget, per guess)."""
    return counted_as(request.remote_addr or "unknown")


def counted_as(address: str) -> str:
    """``address`` as the limits count it: an IPv4 address (also written IPv4-mapped) as it is,
    an IPv6 address as its /64; anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone id (fe80::1%eth0) names no other host
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _login_name() -> str:
    name = request.form.get("login", "").strip().lower()[:254]
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def client_and_login() -> str:
    """The key of the per-(address, login) limit; the name is hashed (any length, any characters)."""
    return f"{client_address()}/{_login_name()}"


def _failed(response: Response) -> bool:
    return response.status_code == 401


def init_app(app: Flask, store: Store, per_login: str, per_client: str) -> Limiter:
    """A limiter for this app; only the login form is limited, and only failures count."""
    limiter = Limiter(client_address, app=app, storage_uri=f"{SCHEME}://",
                      storage_options={"store": store},  # type: ignore[dict-item]
                      strategy="fixed-window", key_prefix="login", headers_enabled=True,
                      retry_after="delta-seconds")
    view: Any = app.view_functions["auth.login"]
    view = limiter.limit(per_login, key_func=client_and_login, methods=["POST"], deduct_when=_failed,
                         scope="client+login")(view)
    view = limiter.limit(per_client, key_func=client_address, methods=["POST"], deduct_when=_failed,
                         scope="client")(view)
    app.view_functions["auth.login"] = view
    from webui import digest  # digest release links: bad ones (a guesser's) count per client address
    for endpoint in ("digest.confirm", "digest.redeem"):
        link_view: Any = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(
            digest.BAD_LINKS, key_func=client_address, deduct_when=_bad_link, scope="digest-links",
        )(link_view)
    return limiter


def _bad_link(response: Response) -> bool:
    from webui import digest
    return response.status_code in digest.BAD_LINK_STATUSES
