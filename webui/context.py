"""The app's store and settings, as blueprints reach them.

``create_app`` puts them in ``app.extensions``; blueprints read them from the
current app through ``store()`` and ``settings()`` here, so no blueprint imports
the ``webui`` package (which imports the blueprints).
"""

from __future__ import annotations

from flask import Flask, current_app

from stronghold.config import Config
from stronghold.store.db import Store

STORE = "stronghold_store"
CONFIG = "stronghold_config"


def install(app: Flask, store: Store, cfg: Config) -> None:
    """Give ``app`` the store and settings its blueprints use."""
    app.extensions[STORE] = store
    app.extensions[CONFIG] = cfg


def store() -> Store:
    """The current app's store."""
    return current_app.extensions[STORE]


def settings() -> Config:
    """The current app's settings."""
    return current_app.extensions[CONFIG]
