"""The Flask web UI: create_app() and one blueprint per concept.

The UI is a thin layer over the store (stronghold.store.*) and the same list
validation the milter uses; it holds no mail policy of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, g, render_template
from flask_wtf.csrf import CSRFError, CSRFProtect

from stronghold import config as config_mod
from stronghold.config import Config
from stronghold.store.db import Store
from stronghold.webkey import secret_key

csrf = CSRFProtect()


def create_app(test_config: Mapping[str, Any] | None = None, cfg: Config | None = None) -> Flask:
    """Build the app; ``test_config`` holds Stronghold settings (and Flask keys in upper case)."""
    settings = {k: v for k, v in (test_config or {}).items() if not k.isupper()}
    flask_keys = {k: v for k, v in (test_config or {}).items() if k.isupper()}
    cfg = cfg or config_mod.load(overrides=settings)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key(cfg),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.web_secure_cookies,
        SESSION_COOKIE_NAME="stronghold_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    app.config.update(flask_keys)
    store = Store(cfg.db_url)
    store.upgrade()
    app.extensions["stronghold_store"] = store
    app.extensions["stronghold_config"] = cfg
    csrf.init_app(app)

    from webui import admin, auth, dashboard, digest, junk, lists, messages
    for module in (auth, dashboard, lists, messages, junk, digest, admin):
        app.register_blueprint(module.bp)

    @app.template_filter("strftime")
    def format_time(ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                    "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if g.get("user") is not None:
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(CSRFError)
    def csrf_failed(err: CSRFError):
        return render_template("error.html", title="Form expired",
                               message="The form was stale or came from elsewhere. Go back, reload and try again."), 400

    @app.errorhandler(404)
    def not_found(err: Exception):
        return render_template("error.html", title="Not found", message="There is nothing here."), 404

    @app.errorhandler(403)
    def forbidden(err: Exception):
        return render_template("error.html", title="Not allowed",
                               message="You cannot see or change this."), 403

    return app


def store() -> Store:
    from flask import current_app
    return current_app.extensions["stronghold_store"]


def settings() -> Config:
    from flask import current_app
    return current_app.extensions["stronghold_config"]


__all__ = ["Path", "create_app", "csrf", "settings", "store"]
