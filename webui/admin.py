"""Admins: users, their addresses and passwords; the global lists live in webui.lists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from stronghold.lists import display
from stronghold.store import accounts, quarantine
from stronghold.store.errors import EntryError
from stronghold.store.tables import User
from webui.auth import admin_required
from webui.confirm import confirmed
from webui.context import store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.route("/users")
@admin_required
def users():
    with store().session() as s:
        rows = accounts.all_users(s)
        held = unseen_held(s, rows)
    return render_template("admin_users.html", users=rows, errors={}, form={}, held=held)


def unseen_held(session: Session, users: Iterable[User]) -> dict[int, int]:
    """{user id: unreleased held messages of a disabled user's addresses} (only admins see those)."""
    return {u.id: quarantine.count_unattended(session, accounts.owned_addresses(u)) for u in users if u.disabled}


@bp.route("/users", methods=["POST"])
@admin_required
def create_user():
    form = {k: request.form.get(k, "") for k in ("login", "password", "addresses")}
    addresses = [a for a in form["addresses"].replace(",", " ").split() if a]
    try:
        with store().session() as s:
            user = accounts.add_user(s, form["login"], form["password"], admin=request.form.get("admin") == "1")
            for address in addresses:
                accounts.assign_address(s, user, address)
    except EntryError as exc:
        with store().session() as s:
            rows = accounts.all_users(s)
        form.pop("password")
        return render_template("admin_users.html", users=rows, errors={"create": str(exc)}, form=form), 400
    flash(f"User {form['login'].strip().lower()} created.")
    return redirect(url_for("admin.users"))


def _user_or_404(session, user_id: int):
    user = accounts.get_user_by_id(session, user_id)
    if user is None:
        abort(404)
    return user


@bp.route("/users/<int:user_id>", methods=["POST"])
@admin_required
def change_user(user_id: int):
    action = request.form.get("action", "")
    ended = 0
    if action in ("delete", "remove-address") and not confirmed():
        return _confirm(user_id, action)
    try:
        with store().session() as s:
            user = _user_or_404(s, user_id)
            login = user.login
            if user.id == g.user.id and action in ("disable", "delete"):
                raise EntryError("you cannot disable or delete your own account")
            if action == "disable":
                accounts.set_disabled(user, True)
            elif action == "enable":
                accounts.set_disabled(user, False)
            elif action == "delete":
                accounts.delete_user(s, user)
            elif action == "password":
                accounts.set_password(s, user, request.form.get("password", ""))
            elif action == "logout-all":
                ended = accounts.end_sessions(s, user.id)
            elif action == "add-address":
                accounts.assign_address(s, user, request.form.get("address", ""))
            elif action == "remove-address":
                accounts.release_address(s, user, request.form.get("address", ""))
            else:
                abort(400)
    except EntryError as exc:
        flash(f"{login}: {exc}", "error")
        return redirect(url_for("admin.users"))
    messages = {"disable": "disabled", "enable": "enabled", "delete": "deleted",
                "password": "has a new password", "add-address": "got the address",
                "remove-address": "lost the address",
                "logout-all": f"was logged out everywhere ({ended} session{'s' if ended != 1 else ''} ended)"}
    flash(f"User {login} {messages[action]}.{_held_note(user_id) if action == 'disable' else ''}")
    return redirect(url_for("admin.users"))


def _held_note(user_id: int) -> str:
    """After disabling: where their held mail goes from now on."""
    with store().session() as s:
        user = _user_or_404(s, user_id)
        waiting = quarantine.count_unattended(s, accounts.owned_addresses(user))
    if not waiting:
        return ""
    return (f" {waiting} held message{'s' if waiting != 1 else ''} of theirs now show{'' if waiting != 1 else 's'} "
            "only on the Junk page of administrators (“Show only those”).")


def _confirm(user_id: int, action: str):
    with store().session() as s:
        user = _user_or_404(s, user_id)
        login, addresses = user.login, [display(a) for a in accounts.owned_addresses(user)]
    address = request.form.get("address", "")
    shown = display(address)
    if action == "delete":
        title = f"Delete user {login}?"
        detail = ("Their addresses are released: the allow and block lists of "
                  f"{', '.join(addresses)} are deleted too, and whoever gets an address next "
                  "starts with empty lists and no past mail." if addresses else "")
    else:
        title = f"Remove {shown} from {login}?"
        detail = (f"The allow and block lists of {shown} are deleted, and whoever gets it next "
                  "starts with empty lists and no past mail.")
    return render_template("confirm.html", title=title, question=title, detail=detail,
                           action=request.path, fields={"action": action, "address": address},
                           button="Delete user" if action == "delete" else "Remove address",
                           cancel=url_for("admin.users"))
