"""The web UI's secret key, shared with what signs links outside a request (the digest).

It signs the session cookie (which names the login's record in the store), the forms' CSRF tokens
and the digest's release links, so every node must use the same one: a link signed by the node
that sent the digest is opened by whichever web node the proxy picks, and a browser's next request
may go to another node.  Unless ``web_secret_key`` is configured, the key lives in the database
every node shares (``store.sitekeys``)."""

from __future__ import annotations

import functools
import secrets
from pathlib import Path

from stronghold.config import Config
from stronghold.store import sitekeys
from stronghold.store.db import Store

OLD_KEY_FILE = "web-secret-key"  # where a version before 0010 generated it, one per data_dir


def secret_key(cfg: Config) -> str:
    """The configured key, or the one stored in the database (made by the first node needing it)."""
    if cfg.web_secret_key:
        return cfg.web_secret_key
    return _stored_key(cfg.db_url, cfg.data_dir)


@functools.lru_cache(maxsize=8)
def _stored_key(db_url: str, data_dir: Path) -> str:
    """The database's key (read once per process).  The first node stores the key it generated
    into its data_dir before, if it has one, so the links it sent and its logins stay valid; each
    node used to generate its own there, and a cookie, form or digest link from one node was
    refused by every other."""
    old = data_dir / OLD_KEY_FILE
    candidate = old.read_text().strip() if old.is_file() else ""
    with Store(db_url) as store, store.session() as session:
        return sitekeys.shared(session, sitekeys.WEB, candidate or secrets.token_hex(32))
