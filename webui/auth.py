"""Log in and out, change password; who the current user is; rate limiting."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for

from stronghold.store import accounts
from stronghold.store.errors import EntryError
from webui import store

bp = Blueprint("auth", __name__)

MAX_FAILURES = 5
WINDOW_SECONDS = 15 * 60


class LoginThrottle:
    """Failed logins per login name and per client address in a sliding window."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = WINDOW_SECONDS) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)

    def clear(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)


throttle = LoginThrottle()


def _fingerprint(password_hash: str) -> str:
    """Ties a session to the password: a reset logs out every other session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@bp.before_app_request
def load_user() -> None:
    g.user = None
    g.addresses = ()
    user_id = session.get("user_id")
    if user_id is None:
        return
    with store().session() as s:
        user = accounts.get_user_by_id(s, user_id)
        if user is None or user.disabled or session.get("pw") != _fingerprint(user.password_hash):
            session.clear()
            return
        g.user = user
        g.addresses = tuple(accounts.owned_addresses(user))


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
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        login_name = request.form.get("login", "").strip().lower()[:254]
        password = request.form.get("password", "")[:1024]
        keys = (f"login:{login_name}", f"ip:{request.remote_addr}")
        if throttle.blocked(*keys):
            error = "Too many failed attempts. Wait a few minutes and try again."
        else:
            with store().session() as s:
                user = accounts.authenticate(s, login_name, password)
                if user is None:
                    throttle.failed(*keys)
                    error = "Wrong login or password."  # the same for unknown users
                else:
                    throttle.clear(f"login:{login_name}")
                    session.clear()
                    session.permanent = True
                    session["user_id"] = user.id
                    session["pw"] = _fingerprint(user.password_hash)
                    return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=error), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


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
                    accounts.set_password(s, user, new)
                except EntryError as exc:
                    errors["new"] = str(exc)
                else:
                    s.flush()
                    session["pw"] = _fingerprint(user.password_hash)
                    flash("Your password was changed.")
                    return redirect(url_for("dashboard.index"))
    return render_template("password.html", errors=errors), (400 if errors else 200)
