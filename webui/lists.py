"""Allow and block lists of one address (or the global lists, for admins)."""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for

from stronghold.lists import KINDS
from stronghold.store import entries
from stronghold.store.errors import EntryError
from webui import store
from webui.auth import login_required

bp = Blueprint("lists", __name__, url_prefix="/lists")
GLOBAL = "global"


def scope_or_404(address: str) -> str | None:
    """The list owner named in the URL if the current user may edit it.

    A user edits only addresses they own; admins also edit anyone's and the
    global lists.  Anything else is a 404, so ids and addresses of other users
    cannot even be probed.
    """
    address = address.strip().lower()
    if address == GLOBAL:
        if g.user.is_admin:
            return None
        abort(404)
    if address in g.addresses or g.user.is_admin:
        return address
    abort(404)


def _render(address: str, owner: str | None, errors: dict[str, str] | None = None,
            form: dict[str, str] | None = None, problems: list[str] | None = None, status: int = 200):
    q = request.args.get("q", "").strip()[:100]
    with store().session() as s:
        items = {kind: entries.entries(s, owner, kind, q) for kind in KINDS}
    return render_template("lists.html", address=address, owner=owner, items=items, q=q,
                           errors=errors or {}, form=form or {}, problems=problems or []), status


@bp.route("/")
@login_required
def index():
    if g.addresses:
        return redirect(url_for("lists.show", address=g.addresses[0]))
    if g.user.is_admin:
        return redirect(url_for("lists.show", address=GLOBAL))
    return render_template("lists_none.html")


@bp.route("/<address>")
@login_required
def show(address: str):
    owner = scope_or_404(address)
    return _render(address.lower(), owner)


@bp.route("/<address>/add", methods=["POST"])
@login_required
def add(address: str):
    owner = scope_or_404(address)
    kind = request.form.get("kind", "")
    pattern = request.form.get("pattern", "")
    comment = request.form.get("comment", "")
    trust = kind == "allow" and request.form.get("trust_unauthenticated") == "1"
    if kind not in KINDS:
        abort(400)
    try:
        with store().session() as s:
            entry = entries.add_entry(s, owner, kind, pattern, comment, trust_unauthenticated=trust)
    except EntryError as exc:
        return _render(address.lower(), owner, errors={kind: str(exc)},
                       form={"kind": kind, "pattern": pattern, "comment": comment}, status=400)
    flash(f"{entry.pattern} added to the {kind} list.")
    return redirect(url_for("lists.show", address=address.lower()))


@bp.route("/<address>/remove/<int:entry_id>", methods=["POST"])
@login_required
def remove(address: str, entry_id: int):
    owner = scope_or_404(address)
    try:
        with store().session() as s:
            entry = entries.remove_entry(s, entry_id, [owner])
    except EntryError:
        abort(404)
    flash(f"{entry.pattern} removed from the {entry.kind} list.")
    return redirect(url_for("lists.show", address=address.lower()))


@bp.route("/<address>/trust/<int:entry_id>", methods=["POST"])
@login_required
def trust(address: str, entry_id: int):
    """Let an allow entry match unauthenticated senders, or require authentication again."""
    owner = scope_or_404(address)
    wanted = request.form.get("trust") == "1"
    try:
        with store().session() as s:
            entry = entries.set_trust(s, entry_id, [owner], wanted)
    except EntryError:
        abort(404)
    flash(f"{entry.pattern} is now trusted without authentication: anyone can forge it." if wanted
          else f"{entry.pattern} now applies only to authenticated mail.")
    return redirect(url_for("lists.show", address=address.lower()))


@bp.route("/<address>/import", methods=["POST"])
@login_required
def import_csv(address: str):
    owner = scope_or_404(address)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _render(address.lower(), owner, errors={"import": "Choose a CSV file."}, status=400)
    try:
        text = upload.read(1024 * 1024).decode("utf-8-sig")
    except UnicodeDecodeError:
        return _render(address.lower(), owner, errors={"import": "The file is not UTF-8 text."}, status=400)
    kind = request.form.get("kind") or None
    with store().session() as s:
        added, problems = entries.import_csv(s, owner, text, kind if kind in KINDS else None)
    flash(f"Imported {added} entries" + (f"; {len(problems)} lines refused." if problems else "."))
    if problems:
        return _render(address.lower(), owner, problems=problems)
    return redirect(url_for("lists.show", address=address.lower()))


@bp.route("/<address>/export.csv")
@login_required
def export_csv(address: str):
    owner = scope_or_404(address)
    with store().session() as s:
        text = entries.export_csv(entries.entries(s, owner))
    name = (owner or GLOBAL).replace("@", "_at_")
    return Response(text, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="lists-{name}.csv"'})
