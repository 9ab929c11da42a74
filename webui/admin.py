"""Admins: users, their addresses and passwords; the global lists live in webui.lists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from stronghold.lists import display
from stronghold.store import accounts, quarantine
from stronghold.store.errors import EntryError
from stronghold.store.tables import User
from webui.auth import admin_required, start_session
from webui.confirm import confirmed
from webui.context import store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

bp = Blueprint("admin", __name__, url_prefix="/admin")
ROW_FIELDS = {"add-address": "address", "password": "password"}  # a user's row: action -> its field


@bp.route("/users")
@admin_required
def users():
    return _page()


def _page(errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
          row: tuple[int, str, str, str] | None = None, status: int = 200):
    """The users page; ``errors`` and ``form``: the new-user form's, by field; ``row``: (user id,
    field, error, value typed) of a user's own form that failed, shown beside that field."""
    with store().session() as s:
        rows = accounts.all_users(s)
        held = unseen_held(s, rows)
    return render_template("admin_users.html", users=rows, errors=errors or {}, form=form or {}, held=held,
                           row=row), status


def unseen_held(session: Session, users: Iterable[User]) -> dict[int, int]:
    """{user id: unreleased held messages of a disabled user's addresses} (only admins see those)."""
    return {u.id: quarantine.count_unattended(session, accounts.owned_addresses(u)) for u in users if u.disabled}


@bp.route("/users", methods=["POST"])
@admin_required
def create_user():
    """Every field is checked before anything is created; each problem is shown beside its field,
    with what was typed (but the password) kept."""
    form = {k: request.form.get(k, "") for k in ("login", "password", "addresses")}
    form["admin"] = "1" if request.form.get("admin") == "1" else ""
    addresses = [a for a in form["addresses"].replace(",", " ").split() if a]
    errors = _new_user_errors(form["login"], form["password"], addresses)
    if not errors:
        try:
            with store().session() as s:
                user = accounts.add_user(s, form["login"], form["password"], admin=form["admin"] == "1")
                login = user.login
                for address in addresses:
                    accounts.assign_address(s, user, address)
        except EntryError as exc:  # taken meanwhile by another admin: nothing was created
            errors["login"] = str(exc)
    if errors:
        form.pop("password")
        return _page(errors, form, status=400)
    flash(f"User {login} created.")
    return redirect(url_for("admin.users"))


def _new_user_errors(login: str, password: str, addresses: list[str]) -> dict[str, str]:
    """{field: what is wrong with it} of the new-user form."""
    errors = {}
    with store().session() as s:
        for field, check in (("login", lambda: accounts.check_new_login(s, login)),
                             ("password", lambda: accounts.check_password_strength(password))):
            try:
                check()
            except EntryError as exc:
                errors[field] = str(exc)
        problems = []
        for address in addresses:
            try:
                accounts.check_assignable(s, address)
            except EntryError as exc:
                problems.append(str(exc))
    if problems:
        errors["addresses"] = "; ".join(problems)
    return errors


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
            if user.id == g.user.id and action == "role":
                raise EntryError("you cannot change your own role: another administrator can")
            if user.id == g.user.id and action == "password":
                raise EntryError("change your own password on the Password page: it asks for the current one")
            if action == "disable":
                accounts.set_disabled(user, True)
            elif action == "enable":
                accounts.set_disabled(user, False)
            elif action == "delete":
                accounts.delete_user(s, user)
            elif action == "password":
                accounts.set_password(s, user, request.form.get("password", ""))
            elif action == "role":
                accounts.set_role(s, user, request.form.get("role", ""))
            elif action == "logout-all":
                ended = accounts.end_sessions(s, user.id)
            elif action == "add-address":
                accounts.assign_address(s, user, request.form.get("address", ""))
            elif action == "remove-address":
                accounts.release_address(s, user, request.form.get("address", ""))
            else:
                abort(400)
    except EntryError as exc:
        if action in ROW_FIELDS:  # beside the field, what was typed kept (not a password)
            typed = request.form.get("address", "") if action == "add-address" else ""
            return _page(row=(user_id, ROW_FIELDS[action], str(exc), typed), status=400)
        flash(f"{login}: {exc}", "error")
        return redirect(url_for("admin.users"))
    everywhere, other = "everywhere", ""
    if action == "logout-all" and user_id == g.user.id:
        start_session(g.user)  # this browser carries on, as with the Password page's "everywhere else"
        ended, everywhere, other = ended - 1, "everywhere else", " other"
    role = "an administrator" if request.form.get("role") == "admin" else "a plain user"
    messages = {"role": f"is now {role}", "disable": "disabled", "enable": "enabled", "delete": "deleted",
                "password": "has a new password", "add-address": "got the address",
                "remove-address": "lost the address",
                "logout-all": f"was logged out {everywhere} ({ended}{other} session{'s' if ended != 1 else ''} ended)"}
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
