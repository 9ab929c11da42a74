"""`stronghold web`: the UI behind waitress, a production WSGI server, on loopback by default."""

from __future__ import annotations

import logging

from waitress import serve as waitress_serve

from stronghold.config import Config, ConfigError
from stronghold.digest import Scheduler
from webui import create_app

log = logging.getLogger(__name__)


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"web_bind {bind!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(cfg: Config) -> int:
    host, port = parse_bind(cfg.web_bind)
    app = create_app(cfg=cfg)
    # Digests are sent from here (not the milter): this process holds the key that signs their
    # links and serves the pages they open. Each digest is claimed in the database, so several
    # web processes (or a timer running `stronghold digest` as well) still send it once.
    digests = Scheduler(cfg, app.extensions["stronghold_store"]).start()
    print(f"stronghold web: http://{host}:{port}/", flush=True)
    try:
        waitress_serve(app, host=host, port=port, threads=8, ident="stronghold")
    finally:
        digests.stop()
    return 0
