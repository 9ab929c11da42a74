"""The Flask web UI: create_app() and one blueprint per concept.

The UI is a thin layer over the store (stronghold.store.*) and the same list
validation the milter uses; it holds no mail policy of its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, g, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, ValidationError

from stronghold import config as config_mod
from stronghold.config import Config
from stronghold.lists import display, envelope_shown, other_envelope, shown_from
from stronghold.store.db import Store
from stronghold.store.errors import StoreError, StoreUnavailable
from stronghold.store.ratelimits import ERRORS as LIMIT_COUNTER_ERRORS
from stronghold.webkey import secret_key
from webui import context
from webui.safetext import visible

csrf = CSRFProtect()
# The largest id a row can have: id columns are INTEGER, 32-bit on PostgreSQL (SQLite's are wider).
MAX_ROW_ID = 2 ** 31 - 1


def secure_cookies(cfg: Config) -> bool:
    """Whether cookies are marked Secure: when asked (``web_secure_cookies``), and whenever users
    reach the UI over https (``web_base_url``), so a proxy's TLS is not undone by a cookie that a
    plain-http link would send in clear."""
    return cfg.web_secure_cookies or cfg.web_base_url.startswith("https://")


def create_app(test_config: Mapping[str, Any] | None = None, cfg: Config | None = None) -> Flask:
    """Build the app; ``test_config`` holds Stronghold settings (and Flask keys in upper case)."""
    settings = {k: v for k, v in (test_config or {}).items() if not k.isupper()}
    flask_keys = {k: v for k, v in (test_config or {}).items() if k.isupper()}
    cfg = cfg or config_mod.load(overrides=settings)
    app = Flask(__name__)
    app.url_map.converters["int"] = RowId  # before any route is added
    store = Store(cfg.db_url)
    try:
        store.upgrade()  # before the key: a new database gets the table that holds it
    except StoreError:
        store.dispose()
        raise
    app.config.update(
        SECRET_KEY=secret_key(cfg),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies(cfg),
        SESSION_COOKIE_NAME="stronghold_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=cfg.web_session_hours),
        MAX_CONTENT_LENGTH=cfg.web_import_max_bytes + 64 * 1024,  # the CSV plus the form around it
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    app.config.update(flask_keys)
    context.install(app, store, cfg)
    csrf.init_app(app)
    if cfg.web_trusted_proxies:
        n = cfg.web_trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    from webui import admin, auth, dashboard, digest, junk, lists, messages, ratelimit, usersettings
    for module in (auth, dashboard, lists, messages, junk, digest, usersettings, admin):
        app.register_blueprint(module.bp)
    ratelimit.init_app(app, store, cfg.web_login_limits, cfg.web_client_limits)

    @app.template_filter("strftime")
    def format_time(ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))

    app.add_template_filter(shown, "shown")
    app.add_template_filter(visible, "visible")
    app.add_template_filter(breakable, "breakable")
    app.add_template_global(other_envelope, "other_envelope")
    app.add_template_global(shown_from, "shown_from")
    app.add_template_global(envelope_shown, "envelope_shown")
    _error_pages(app)

    @app.route("/favicon.ico")
    def favicon():
        """The icon browsers ask for on every page (a 404 was a console error on each). At this
        default address, not a <link>: the Junk preview's policy (img-src 'none') would block that."""
        return app.send_static_file("favicon.svg")

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

    return app


class RowId(IntegerConverter):
    """``<int:...>`` in every route: 0 up to ``MAX_ROW_ID``, else 404.

    A larger number cannot be a row id, and the databases refuse it instead of
    finding nothing (SQLite raises OverflowError past 64 bits, PostgreSQL
    "integer out of range" past 32), so it never reaches a query.
    """

    def to_python(self, value: str) -> int:
        number = super().to_python(value)
        if number > MAX_ROW_ID:
            raise ValidationError()
        return number


def shown(pattern: str) -> str:
    """A stored pattern or address for people: its domain in Unicode, nothing hidden in it."""
    return visible(display(pattern))


def breakable(text: str) -> Markup:
    """Escaped ``text`` that may wrap after a dot or before an @ (a domain breaks between labels)."""
    return Markup("<wbr>").join(escape(piece) for piece in re.split(r"(?<=\.)|(?=@)", text))


ERRORS = {
    400: ("Bad request", "The request was not understood. Go back and try again."),
    403: ("Not allowed", "You cannot see or change this."),
    404: ("Not found", "There is nothing here."),
    405: ("Not here", "This page does not take that kind of request. Use the links and buttons of the site."),
    413: ("Too large", "What you sent is larger than this site accepts."),
    500: ("Something went wrong", "The server failed to do that; nothing was changed. Try again, "
          "and tell your administrator if it keeps failing."),
}


DATABASE_AWAY = ("The database cannot be reached just now, so this could not be done: a change you sent may "
                 "not have been saved. Try again in a minute (your login is kept); tell your administrator "
                 "if it keeps failing.")


def _error_pages(app: Flask) -> None:
    """Every error in the site's own page, never Werkzeug's bare one."""

    @app.errorhandler(CSRFError)
    def csrf_failed(err: CSRFError):
        return render_template("error.html", title="Form expired",
                               message="The form was stale or came from elsewhere. Go back, reload and try again."), 400

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(err: RequestEntityTooLarge):
        limit = context.settings().web_import_max_bytes
        return render_template("error.html", title="Too large",
                               message=f"What you sent is larger than this site accepts: files up to "
                                       f"{limit // 1024} KiB. Split the file and send the parts one by one."), 413

    @app.errorhandler(429)
    def too_many(err: HTTPException):
        if request.blueprint == "digest":
            from webui import digest
            return digest.too_many()
        return render_template("login.html", error="Too many failed attempts from here. Wait a while "
                                                    "and try again, or log in from another device."), 429

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        code = err.code or 500
        title, message = ERRORS.get(code, (err.name, err.description or ""))
        return render_template("error.html", title=title, message=message), code

    @app.errorhandler(StoreUnavailable)
    @app.errorhandler(LIMIT_COUNTER_ERRORS)
    def database_away(err: Exception):
        """The database is down or restarting: one line in the log, not a traceback per request, and
        a page that claims nothing was saved only as far as it knows (a refusal, such as a unique key,
        stays the 500 page below)."""
        app.logger.error("%s %s: %s", request.method, request.path, str(err).splitlines()[0][:300])
        return render_template("error.html", title="Not available just now", message=DATABASE_AWAY), 503

    @app.errorhandler(Exception)
    def crashed(err: Exception):
        if isinstance(err, HTTPException):
            return http_error(err)
        app.logger.exception("%s %s failed", request.method, request.path)
        title, message = ERRORS[500]
        return render_template("error.html", title=title, message=message), 500

