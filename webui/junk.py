"""The Junk page: a user's quarantined mail, a safe text preview, release / delete / allow / learn.

Who sees what: a user sees the items of the addresses they own, except
viruses; an admin sees everyone's, viruses included.  Users are not shown
virus items at all (not even a row): releasing one is an admin's decision, the
text of a virus mail is a lure written to get it released or acted on, and the
user already learns that a virus was stopped from Recent mail (category virus).
Anything a user may not see is a 404, whatever the URL or form says.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass

from flask import Blueprint, abort, flash, g, make_response, redirect, render_template, request, url_for

from stronghold import digest
from stronghold import release as release_mod
from stronghold.lists import display
from stronghold.store import accounts, entries, messagelog, quarantine
from stronghold.store.errors import EntryError, StoreError
from stronghold.store.quarantine import Held
from stronghold.store.tables import MessageRow
from webui.allownote import allow_note
from webui.auth import login_required
from webui.confirm import confirmed
from webui.context import settings, store
from webui.preview import render as render_preview
from webui.preview import visible
from webui.senders import allow_target

log = logging.getLogger(__name__)
bp = Blueprint("junk", __name__, url_prefix="/junk")
PAGE = 50
MAX_PAGE = 1000

# The preview page shows mail written by strangers: nothing may load or run on it.
PREVIEW_CSP = ("default-src 'none'; style-src 'self'; img-src 'none'; script-src 'none'; "
               "connect-src 'none'; font-src 'none'; media-src 'none'; object-src 'none'; "
               "frame-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
               "sandbox allow-forms allow-same-origin")


def may_see(held: Held) -> bool:
    """Admins: everything; users: their own addresses' items that are not viruses, held since
    they got the address (a previous owner's are not theirs)."""
    if g.user.is_admin:
        return True
    return held.recipient in g.addresses and not held.is_virus and held.ts >= g.since.get(held.recipient, 0.0)


def why(held: Held) -> str:
    """The reason without the category its badge already shows: "spam (high score)" -> "(high score)",
    "virus Eicar-Test-Signature" -> "Eicar-Test-Signature"."""
    reason = held.reason.strip()
    if reason == held.category:
        reason = ""
    elif reason.startswith(held.category + " "):
        reason = reason[len(held.category) + 1:].lstrip()
    return reason or ((held.virus or "") if held.is_virus else "")


def _item_or_none(item_id: int) -> Held | None:
    """The item if the current user may see and act on it; None otherwise (even if it exists)."""
    with store().session() as s:
        held = quarantine.get(s, item_id)
    return with_from([held])[0] if held is not None and may_see(held) else None


def item_or_404(item_id: int) -> Held:
    """The item if the current user may see and act on it; 404 otherwise (even if it exists)."""
    held = _item_or_none(item_id)
    if held is None:
        abort(404)
    return held


class NotActionable(Exception):
    """A form acts on an item the user cannot act on: gone, or never theirs."""


NOT_ACTIONABLE = ("That message is no longer in your quarantine: it was deleted (in another tab or window, "
                  "or by an administrator) or it expired. Nothing was done.")


def item_to_act_on(item_id: int) -> Held:
    """``item_or_404`` for a form: another tab, a user on another web node or an admin may have deleted
    the item since the page was shown, so the form ends on the Junk page with a note saying nothing
    was done (``NotActionable``), not on an error page.  The note is the same for another user's
    item, so it tells nothing about their mail."""
    held = _item_or_none(item_id)
    if held is None:
        raise NotActionable(item_id)
    return held


@bp.errorhandler(NotActionable)
def not_actionable(_err: NotActionable):
    flash(NOT_ACTIONABLE, "error")
    return redirect(url_for("junk.index"))


def with_from(rows: list[Held]) -> list[Held]:
    """``rows`` with the header From of items held before it was recorded read from their copy."""
    if all(h.header_from is not None for h in rows):
        return rows
    with store().session() as s:
        return quarantine.with_from(s, rows)


@dataclass(frozen=True)
class Search:
    text: str = ""
    since: str = ""  # YYYY-MM-DD (UTC), inclusive
    until: str = ""  # YYYY-MM-DD (UTC), inclusive
    page: int = 0
    unattended: bool = False  # admins: only what no enabled user sees (quarantine.unattended_clause)

    def args(self, **change: object) -> dict[str, object]:
        values: dict[str, object] = {"q": self.text, "since": self.since, "until": self.until,
                                     "page": self.page, "unattended": 1 if self.unattended else 0}
        values.update(change)
        return {k: v for k, v in values.items() if v}


def _day(value: str, field: str, errors: list[str]) -> float | None:
    """Midnight UTC of a YYYY-MM-DD date, None if empty; a bad value is reported and ignored."""
    if not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError:
        errors.append(f"The {field} date must look like 2026-11-30.")
        return None


def _search() -> tuple[Search, float | None, float | None, list[str]]:
    raw_page = request.args.get("page", "0")
    search = Search(text=" ".join(request.args.get("q", "").split())[:100],
                    since=request.args.get("since", "").strip()[:10],
                    until=request.args.get("until", "").strip()[:10],
                    page=min(int(raw_page), MAX_PAGE) if raw_page.isdigit() else 0,
                    unattended=bool(g.user.is_admin) and request.args.get("unattended") == "1")
    errors: list[str] = []
    since = _day(search.since, "from", errors)
    until = _day(search.until, "to", errors)
    if until is not None:
        until += 86400  # the whole "to" day
    return search, since, until, errors


@bp.route("/")
@login_required
def index():
    search, since, until, errors = _search()
    admin = bool(g.user.is_admin)
    with store().session() as s:
        rows = quarantine.find(s, recipients=None if admin else list(g.addresses), text=search.text,
                               since=since, until=until, include_viruses=admin,
                               limit=PAGE + 1, offset=search.page * PAGE, owned_since=g.since,
                               unattended=search.unattended)
        waiting = quarantine.count_unattended(s) if admin else 0
        owner_of = accounts.owners(s, {h.recipient for h in rows[:PAGE]}) if admin else {}
    more = len(rows) > PAGE
    return render_template("junk.html", rows=with_from(rows[:PAGE]), more=more, search=search, errors=errors,
                           waiting=waiting, unseen=lambda h: unseen_because(h, owner_of.get(h.recipient)),
                           retention=settings().quarantine_retention_days,
                           everyone=admin, show_recipient=admin or len(g.addresses) > 1, visible=visible,
                           digest_choices=digest.CHOICES, why=why, viruses_held=settings().virus_action == "quarantine")


def unseen_because(held: Held, owner: accounts.Owner | None) -> str:
    """Why no user but an admin sees ``held`` ("" when its owner does)."""
    if owner is None:
        return "no user has this address"
    if owner.disabled:
        return f"user {owner.login} is disabled"
    if held.ts < owner.since:
        return f"held before {owner.login} got this address"
    return ""


@bp.route("/digest", methods=["POST"])
@login_required
def digest_choice():
    """The user's own digest setting: off, daily or weekly."""
    choice = request.form.get("digest", "")
    if choice not in digest.CHOICES:
        abort(400)
    try:
        digest.set_choice(store(), g.user.login, choice)
    except digest.DigestError as exc:
        flash(str(exc), "error")
    else:
        flash("No digest mail any more." if choice == "off" else f"You will get a {choice} digest of held mail.")
    return redirect(url_for("junk.index"))


@bp.route("/<int:item_id>")
@login_required
def show(item_id: int):
    held = item_or_404(item_id)
    with store().session() as s:
        try:
            raw = quarantine.content(s, held.id)
        except KeyError:
            abort(404)
        message_id = messagelog.latest_for_recipient(s, held.queue_id, held.recipient)
    response = make_response(render_template("junk_item.html", h=held, p=render_preview(raw), why=why,
                                             message_id=message_id, visible=visible,
                                             retry=g.user.is_admin and retryable(held)))
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _release(held: Held) -> bool:
    """Re-inject ``held`` for its recipient once; flashes what happened; True if it was sent now."""
    if held.released is not None:
        flash(f"Already released ({_when(held.released)} by {held.released_by or 'someone'}); "
              "nothing was sent again.")
        return False
    try:
        release_mod.release(settings(), store(), held.id, g.user.login, admin=bool(g.user.is_admin))
    except (release_mod.ReleaseError, StoreError) as exc:
        log.warning("release of quarantine item %d by %s failed: %s", held.id, g.user.login, exc)
        flash(f"Not released: {exc}.", "error")
        return False
    log.info("quarantine item %d released to %s by %s", held.id, held.recipient, g.user.login)
    flash(f"Released: “{visible(held.subject) or '(no subject)'}” is on its way to {held.recipient}.")
    return True


def _after_action(held: Held):
    back = request.form.get("back")
    if back == "item":
        return redirect(url_for("junk.show", item_id=held.id))
    return redirect(url_for("junk.index", unattended=1) if back == "unattended" and g.user.is_admin
                    else url_for("junk.index"))


def _ask(held: Held, action: str, title: str, detail: str, button: str):
    """The confirmation page of a step that cannot be undone (its button posts again, confirmed)."""
    return render_template("confirm.html", title=title, question=title, detail=detail, button=button,
                           action=url_for(action, item_id=held.id), fields={"back": request.form.get("back", "")},
                           cancel=url_for("junk.show", item_id=held.id))


@bp.route("/<int:item_id>/release", methods=["POST"])
@login_required
def release(item_id: int):
    held = item_to_act_on(item_id)
    if held.is_virus and held.released is None and not confirmed():
        return _ask(held, "junk.release", f"Release a message carrying {held.virus or 'a virus'}?",
                    f"“{visible(held.subject) or '(no subject)'}” goes to {held.recipient}'s inbox as it is, "
                    "virus and all. Release it only to look at it on a machine it cannot harm.",
                    "Release it anyway")
    _release(held)
    return _after_action(held)


def retryable(held: Held, now: float | None = None) -> bool:
    """Released, the relay never confirmed it, and long enough ago that it is not still in progress."""
    now = time.time() if now is None else now
    return held.released is not None and held.delivered is None and held.released < now - release_mod.RETRY_AFTER


@bp.route("/<int:item_id>/retry", methods=["POST"])
@login_required
def retry(item_id: int):
    """Admins: send again a release whose delivery was never confirmed (see stronghold.release)."""
    held = item_to_act_on(item_id)
    if not g.user.is_admin or not retryable(held):
        abort(404)
    try:
        release_mod.release(settings(), store(), held.id, g.user.login, admin=True, retry_unconfirmed=True)
    except (release_mod.ReleaseError, StoreError) as exc:
        flash(f"Not released: {exc}.", "error")
    else:
        log.info("quarantine item %d: unconfirmed release retried by %s", held.id, g.user.login)
        flash(f"Sent again to {held.recipient}.")
    return redirect(url_for("junk.show", item_id=held.id))


@bp.route("/<int:item_id>/allow", methods=["POST"])
@login_required
def release_and_allow(item_id: int):
    """Release, and put the sender on the allow list of the recipient address: the address an
    allow entry will match for mail like this (``webui.senders.allow_target``), said in the flash."""
    held = item_to_act_on(item_id)
    _release(held)
    target = allow_target(held.header_from, held.sender, held.trace)  # the item's steps and its recipient's
    if target is None:
        flash("This message has no sender address to allow.", "error")
        return _after_action(held)
    sender, why = target
    try:
        with store().session() as s:
            entries.add_entry(s, held.recipient, "allow", sender.address, f"released from quarantine #{held.id}")
    except EntryError as exc:
        flash(f"{held.recipient}: {exc}.")
    else:
        note, category = allow_note(held.trace, sender.check, sender.address)
        said = f"{display(sender.address)} (the {sender.source}) is now on the allow list of {display(held.recipient)}."
        flash(" ".join(part for part in (said, why, note) if part), category)
    return _after_action(held)


@bp.route("/<int:item_id>/notspam", methods=["POST"])
@login_required
def not_spam(item_id: int):
    """Release, and record "not spam" feedback on the logged message for the next training run."""
    held = item_to_act_on(item_id)
    _release(held)
    with store().session() as s:
        message_id = messagelog.latest_for_recipient(s, held.queue_id, held.recipient)
        row = s.get(MessageRow, message_id) if message_id is not None else None
        kept = row is not None and bool(row.tokens)  # no content kept: nothing to learn from
        if row is not None and kept:
            messagelog.set_feedback(s, row.id, g.user.id, False)
    if row is None:
        flash("The filter cannot learn from this one: the message log no longer holds it.")
    elif not kept:
        flash("The filter cannot learn from this one: its content was not kept in the message log.")
    else:
        flash("Marked as not spam. The filter takes it in at its next learning run.")
    return _after_action(held)


@bp.route("/<int:item_id>/delete", methods=["POST"])
@login_required
def delete(item_id: int):
    held = item_to_act_on(item_id)
    if not confirmed():
        return _ask(held, "junk.delete", f"Delete “{visible(held.subject) or '(no subject)'}”?",
                    f"The copy held for {held.recipient} is gone for good: it cannot be released afterwards.",
                    "Delete")
    with store().session() as s:
        gone = quarantine.delete(s, held.id)
    if gone:
        log.info("quarantine item %d (for %s) deleted by %s", held.id, held.recipient, g.user.login)
        flash(f"Deleted “{visible(held.subject) or '(no subject)'}”.")
    else:
        flash("It was already deleted.")
    return _after_action(held) if request.form.get("back") == "unattended" else redirect(url_for("junk.index"))
