"""Log in and out, change password; who the current user is; rate limiting."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for

from stronghold.store import accounts
from stronghold.store.errors import EntryError
from stronghold.store.tables import User
from webui.context import store

bp = Blueprint("auth", __name__)
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")  # controls, spaces and backslashes: browsers drop or bend them


def start_session(user: User) -> None:
    """A fresh server-side session (a new id: no fixation) in a fresh cookie."""
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    with store().session() as s:
        token = accounts.start_session(s, user, lifetime)
    session.clear()
    session.permanent = True
    session["sid"] = token


@bp.before_app_request
def load_user() -> None:
    """The user of the session record the cookie names; a cookie without a live record is dropped."""
    g.user = None
    g.addresses = ()
    g.since = {}
    token = session.get("sid")
    if token is None:
        if "user_id" in session:  # a cookie from before server-side sessions
            session.clear()
        return
    with store().session() as s:
        user = accounts.session_user(s, str(token))
        if user is None:
            session.clear()
            return
        g.user = user
        g.addresses = tuple(accounts.owned_addresses(user))
        g.since = accounts.owned_since(user)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.user is None:
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)
    return wrapped


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.user is None:
            return redirect(url_for("auth.login", next=request.path))
        if not g.user.is_admin:
            abort(403)
        return view(*args, **kwargs)
    return wrapped


def _safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else the dashboard.

    Refused: anything with a scheme or host, ``//``, backslashes, and any control
    character or space (a browser drops a tab or newline, so ``/\t/evil`` became ``//evil``).
    """
    fallback = url_for("dashboard.index")
    if not target or len(target) > 2000 or _UNSAFE.search(target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return fallback
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Failed attempts are counted by webui.ratelimit (per address and login), not here."""
    error = None
    if request.method == "POST":
        login_name = request.form.get("login", "").strip().lower()[:254]
        password = request.form.get("password", "")[:1024]
        with store().session() as s:
            user = accounts.authenticate(s, login_name, password)
        if user is None:
            error = "Wrong login or password."  # the same for unknown users
        else:
            start_session(user)
            return redirect(_safe_next(request.args.get("next")))
    typed = request.form.get("login", "")[:254] if error else ""  # kept: only the password is typed again
    return render_template("login.html", error=error, typed_login=typed), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
def logout():
    token = session.get("sid")
    if token is not None:
        with store().session() as s:
            accounts.end_session(s, str(token))
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/logout-everywhere", methods=["POST"])
@login_required
def logout_everywhere():
    """End every session of mine on every node; this browser carries on in a fresh one."""
    with store().session() as s:
        ended = accounts.end_sessions(s, g.user.id)
    start_session(g.user)
    flash(f"Logged out everywhere else ({ended - 1} other session{'s' if ended != 2 else ''} ended).")
    return redirect(url_for("auth.password"))


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password():
    errors: dict[str, str] = {}
    if request.method == "POST":
        current = request.form.get("current", "")
        new = request.form.get("new", "")
        if request.form.get("confirm", "") != new:
            errors["confirm"] = "The two new passwords differ."
        with store().session() as s:
            user = accounts.authenticate(s, g.user.login, current)
            if user is None:
                errors["current"] = "That is not your current password."
            elif not errors:
                try:
                    accounts.set_password(s, user, new)  # ends every session, this one too
                except EntryError as exc:
                    errors["new"] = str(exc)
        if not errors:
            start_session(g.user)  # this browser carries on in a new session
            flash("Your password was changed. You were logged out everywhere else.")
            return redirect(url_for("dashboard.index"))
    return render_template("password.html", errors=errors), (400 if errors else 200)
