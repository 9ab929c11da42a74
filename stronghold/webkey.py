"""The web UI's secret key, shared with what signs links outside a request (the digest)."""

from __future__ import annotations

import os
import secrets

from stronghold.config import Config


def secret_key(cfg: Config) -> str:
    """The configured key, or one generated once into data_dir (mode 0600)."""
    if cfg.web_secret_key:
        return cfg.web_secret_key
    path = cfg.data_dir / "web-secret-key"
    if not path.exists():
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()
