"""`stronghold web`: the UI behind waitress, a production WSGI server, on loopback by default."""

from __future__ import annotations

import logging

from waitress import serve as waitress_serve

from stronghold.config import Config, ConfigError
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
    print(f"stronghold web: http://{host}:{port}/", flush=True)
    waitress_serve(app, host=host, port=port, threads=8, ident="stronghold")
    return 0
