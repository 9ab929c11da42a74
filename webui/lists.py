"""Allow and block lists of one address (or the global lists, for admins)."""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for

from stronghold import blockrisk
from stronghold.lists import BLOCK, KINDS, display
from stronghold.store import entries
from stronghold.store.errors import EntryError
from webui.auth import login_required
from webui.confirm import confirmed
from webui.context import settings, store

bp = Blueprint("lists", __name__, url_prefix="/lists")
GLOBAL = "global"
SHOWN_PROBLEMS = 1000


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
            form: dict[str, str] | None = None, problems: list[str] | None = None, status: int = 200,
            conflict: entries.ConflictError | None = None):
    q = request.args.get("q", "").strip()[:100]
    with store().session() as s:
        items = {kind: entries.entries(s, owner, kind, q) for kind in KINDS}
    problems = problems or []
    return render_template("lists.html", address=address, owner=owner, items=items, q=q,
                           errors=errors or {}, form=form or {}, problems=problems[:SHOWN_PROBLEMS],
                           more_problems=max(0, len(problems) - SHOWN_PROBLEMS), conflict=conflict), status


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


@bp.route("/<address>/add", methods=["GET", "POST"])
@login_required
def add(address: str):
    """Add an entry (a wide block entry once confirmed: ``ask_block``).  A GET (a reload or the back
    button at the confirmation page, a login that lands here) adds nothing: it goes to the list's
    page, at the block list's form (only a block entry is asked about)."""
    owner = scope_or_404(address)
    if request.method == "GET":
        return redirect(url_for("lists.show", address=address.lower(), _anchor="h-block"))
    kind = request.form.get("kind", "")
    pattern = request.form.get("pattern", "")
    comment = request.form.get("comment", "")
    trust = kind == "allow" and request.form.get("trust_unauthenticated") == "1"
    if kind not in KINDS:
        abort(400)
    if kind == BLOCK and not confirmed():
        shown, risks = block_risks(owner, pattern)
        if risks:
            return ask_block(shown, owner, risks, {"kind": kind, "pattern": pattern, "comment": comment},
                             url_for("lists.show", address=address.lower()))
    try:
        with store().session() as s:
            entry = entries.add_entry(s, owner, kind, pattern, comment, trust_unauthenticated=trust)
    except EntryError as exc:
        return _render(address.lower(), owner, errors={kind: str(exc)},
                       form={"kind": kind, "pattern": pattern, "comment": comment}, status=400,
                       conflict=exc if isinstance(exc, entries.ConflictError) else None)
    flash(f"{display(entry.pattern)} added to the {kind} list.")
    return redirect(url_for("lists.show", address=address.lower()))


def block_risks(owner: str | None, pattern: str) -> tuple[str, list[str]]:
    """(the pattern as people read it, what a block entry of it on ``owner``'s list (None: the
    global list) would refuse beyond one sender: ``stronghold.blockrisk``)."""
    return blockrisk.of_pattern(risk_check(owner), pattern)


def risk_check(owner: str | None) -> blockrisk.Check:
    """``blockrisk.for_list`` of ``owner``'s block list, as the current user sees it."""
    with store().session() as s:
        return blockrisk.for_list(s, owner, g.addresses)


def ask_block(shown: str, owner: str | None, risks: list[str], fields: dict[str, str], cancel: str):
    """The page that asks before a block entry that refuses far more than one sender is added."""
    scope = f"the block list of {display(owner)}" if owner else "the global block list (for everyone)"
    return render_template("confirm.html", title=f"Block {shown}?", question=f"Add {shown} to {scope}?",
                           details=risks, action=request.path, fields=fields, button="Block anyway",
                           cancel=cancel)


@bp.route("/<address>/remove/<int:entry_id>", methods=["POST"])
@login_required
def remove(address: str, entry_id: int):
    owner = scope_or_404(address)
    with store().session() as s:
        found = [e for e in entries.entries(s, owner) if e.id == entry_id]
    if not found:
        abort(404)
    entry = found[0]
    back = url_for("lists.show", address=address.lower())
    shown = display(entry.pattern)
    if not confirmed():
        return render_template("confirm.html", title=f"Remove {shown}?",
                               question=f"Remove {shown} from the {entry.kind} list of "
                                        f"{display(address.lower()) if owner else 'everyone (global)'}?",
                               action=request.path, button="Remove", cancel=back)
    try:
        with store().session() as s:
            entries.remove_entry(s, entry_id, [owner])
    except EntryError:
        abort(404)
    flash(f"{shown} removed from the {entry.kind} list.")
    return redirect(back)


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
    shown = display(entry.pattern)
    flash(f"{shown} is now trusted without authentication: anyone can forge it." if wanted
          else f"{shown} now applies only to authenticated mail.")
    return redirect(url_for("lists.show", address=address.lower()))


@bp.route("/<address>/import", methods=["POST"])
@login_required
def import_csv(address: str):
    """All or nothing: every refused line is listed and nothing is added until the file is clean."""
    owner = scope_or_404(address)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _render(address.lower(), owner, errors={"import": "Choose a CSV file."}, status=400)
    limit = settings().web_import_max_bytes
    data = upload.read(limit + 1)
    if len(data) > limit:
        return _render(address.lower(), owner, status=413, errors={
            "import": f"The file is larger than {limit // 1024} KiB; nothing was imported. "
                      "Split it and import the parts one by one."})
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return _render(address.lower(), owner, status=400, errors={
            "import": f"The file is not UTF-8 text (line {line}); nothing was imported. "
                      "Save it as UTF-8 (CSV UTF-8) and try again."})
    kind = request.form.get("kind") or None
    check = risk_check(owner)
    how = "Add it on its own with the form above, which asks first."

    def refuse_risky(kind: str, pattern: str) -> str | None:
        return blockrisk.import_refusal(check, kind, pattern, how)

    try:
        with store().session() as s:
            report = entries.import_csv(s, owner, text, kind if kind in KINDS else None, refuse=refuse_risky)
    except EntryError as exc:  # the lists would hold too many entries
        return _render(address.lower(), owner, status=400, errors={"import": f"Nothing was imported: {exc}."})
    if report.problems:
        return _render(address.lower(), owner, problems=report.problems, status=400, errors={
            "import": f"Nothing was imported: {len(report.problems)} line"
                      f"{'s' if len(report.problems) != 1 else ''} cannot be. Fix "
                      f"{'them' if len(report.problems) != 1 else 'it'} and import the file again."})
    skipped = f"; {len(report.skipped)} already there" if report.skipped else ""
    trusted = (f" {report.trusted} of them trusted without authentication: anyone can forge those senders."
               if report.trusted else "")
    flash(f"Imported {report.added} entries{skipped}.{trusted}")
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
