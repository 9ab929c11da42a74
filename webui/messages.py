"""Recent mail: what the filter saw, why, and one-click lists and feedback."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from stronghold.lists import ListIndex, Match, PatternError, display, from_address, normalize_address, sender_addresses
from stronghold.store import entries, ledger, messagelog, quarantine
from stronghold.store.errors import EntryError
from stronghold.store.tables import MessageRow
from stronghold.verdict import Category
from webui import tracetext
from webui.allownote import allow_note
from webui.auth import login_required
from webui.confirm import confirmed
from webui.context import store
from webui.lists import ask_block, risk_check
from webui.senders import ENVELOPE, FROM, Sender, allow_target, from_headers

bp = Blueprint("messages", __name__, url_prefix="/messages")
CATEGORIES = tuple(c.value for c in Category)  # what the filter can say; the log filters on it
PAGE = 50
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
READMIT = "stronghold learn --readmit"  # what lets a set-aside mark in (stronghold.cli_learn)
NOTHING_KEPT = "Nothing of this message's content was kept, so there is nothing to learn from."
# One stored clue: the token (which may hold spaces, as header values do) and ":" its spam
# probability to three places (stronghold.precedence writes them, messagelog joins them with spaces).
_CLUE = re.compile(r".+?:[01]\.\d{3}")
_CLUE_END = re.compile(r"(?<=:[01]\.\d{3}) ")


def sender_of(row: MessageRow) -> Sender | None:
    """Whom the list buttons act on: the From address people see, else the envelope sender
    (an allow entry is added for ``senders.allow_target`` instead).  The From address is
    ``lists.from_address``'s: none when the From names several (or a name looks like one)."""
    header = from_address(row.header_from)
    if header is not None:
        return Sender(header, FROM)
    try:
        return Sender(normalize_address(row.sender or ""), ENVELOPE)
    except PatternError:
        return None


@dataclass(frozen=True)
class Kept:
    """What the pages read from the features kept of each message (by message id)."""

    from_headers: dict[int, int]  # how many From headers it had (``senders.from_headers``)
    set_aside: set[int]  # those whose mark a model rollback set aside, waiting for 'learn --readmit'


def kept(rows: list[MessageRow], marked: Collection[int]) -> Kept:
    """``Kept`` of ``rows``; ``marked``: the ids of those the user marked (feedback)."""
    tokens = {r.id: messagelog.unpack_tokens(r.tokens) for r in rows if r.tokens}
    hashes = {i: ledger.content_hash(t) for i, t in tokens.items() if i in marked}
    with store().session() as s:
        aside = ledger.set_aside_among(s, set(hashes.values()))
    return Kept({r.id: from_headers(tokens.get(r.id)) for r in rows}, {i for i, h in hashes.items() if h in aside})


def _list_status(rows: list[MessageRow]) -> dict[int, dict[str, Match]]:
    """Per message, the entry of my lists its sender is already on ({'block': match, ...})."""
    with store().session() as s:
        index = ListIndex([e for a in g.addresses for e in entries.entries(s, a)])
    status: dict[int, dict[str, Match]] = {}
    for row in rows:
        senders = sender_addresses(row.sender or "", row.header_from)  # as the lists match them
        if not senders:
            continue
        for address in (r.address for r in row.recipients if r.address in g.addresses):
            for kind in ("block", "allow"):
                found = index.find(address, kind, senders)
                if found is not None:
                    status.setdefault(row.id, {}).setdefault(kind, found)
    return status


def _viewer_scope() -> tuple[str, ...] | None:
    """Addresses whose mail the user may see; None (everything) for admins asking for all."""
    if g.user.is_admin and request.values.get("all") == "1":
        return None
    return g.addresses


@dataclass(frozen=True)
class Shown:
    """The verdict a page shows for a message: what the filter decided for the viewer's addresses
    (another recipient's allow entry makes the message "allowed" while theirs was held as spam)."""

    category: str
    action: str


def shown_verdict(row: MessageRow, addresses: Collection[str] | None) -> Shown:
    """``row``'s verdict for ``addresses`` (None, or none of them among its recipients: the message's)."""
    theirs = [r for r in row.recipients if addresses is not None and r.address in addresses]
    category = messagelog.viewer_category(row.category, [r.category for r in theirs])
    action = next((r.action for r in theirs if r.category == category), row.action)
    return Shown(category, action)


def message_or_404(message_id: int):
    """The message row if the current user received it (admins: any)."""
    scope = None if g.user.is_admin else g.addresses
    with store().session() as s:
        row = messagelog.visible_message(s, message_id, scope, g.since)
        if row is None:
            abort(404)
        _ = row.recipients  # load before the session closes
        return row


@bp.route("/")
@login_required
def index():
    category = request.args.get("category", "")
    if category not in CATEGORIES:
        category = ""
    raw_page = request.args.get("page", "0")
    page = min(int(raw_page), 1000) if raw_page.isdigit() else 0
    q = request.args.get("q", "").strip()[:100]
    day = request.args.get("day", "").strip()
    day = day if _DAY.fullmatch(day) else ""
    scope = _viewer_scope()
    with store().session() as s:
        try:
            rows = messagelog.recent(s, messagelog.LogFilter(scope, category, PAGE + 1, page * PAGE, g.since,
                                                             search=q, day=day))
        except ValueError:  # a day like 2026-13-45
            day, rows = "", messagelog.recent(s, messagelog.LogFilter(scope, category, PAGE + 1, page * PAGE,
                                                                      g.since, search=q))
        more, rows = len(rows) > PAGE, rows[:PAGE]  # one more row read: is there an older page?
        feedback = messagelog.feedback_for(s, [r.id for r in rows], g.user.id)
        for r in rows:
            _ = r.recipients
    return render_template("messages.html", rows=rows, feedback=feedback, nothing_kept=NOTHING_KEPT, category=category,
                           global_rules=global_rules(rows),
                           categories=CATEGORIES, page=page, more=more, q=q, day=day,
                           show_all=scope is None, mine=set(g.addresses), senders={r.id: sender_of(r) for r in rows},
                           allow_to={r.id: _allow_address(r) for r in rows}, kept=kept(rows, feedback),
                           shown={r.id: shown_verdict(r, scope) for r in rows},
                           readmit=READMIT,
                           status=_list_status(rows))


@bp.route("/<int:message_id>")
@login_required
def show(message_id: int):
    row = message_or_404(message_id)
    with store().session() as s:
        fb = messagelog.feedback_for(s, [row.id], g.user.id).get(row.id)
        held = quarantine.ids_for_message(s, row.queue_id, [r.address for r in row.recipients],
                                          None if g.user.is_admin else g.addresses)
    sender = sender_of(row)
    facts = kept([row], [row.id] if fb else [])
    trace = tracetext.parse(row.trace)  # once, for the readings below
    allow_to, allow_why = allow_target(row.header_from, row.sender, trace) or (None, "")
    skipped = skipped_allow(trace)
    status = _list_status([row]).get(row.id, {})
    allowed = status.get("allow")  # the address the entry matched, as allow entries check it
    return render_template("message.html", m=row, clues=clues(row.reasons or ""), fb=fb, nothing_kept=NOTHING_KEPT,
                           shown=shown_verdict(row, g.addresses),
                           rules={r.address: tracetext.list_rule(trace, r.address, len(row.recipients) == 1)
                                  for r in row.recipients},
                           mine=set(g.addresses), held=held,
                           allow_to=allow_to, allow_why=allow_why, sender=sender, status=status,
                           auth=auth_step(trace), skipped=skipped, from_headers=facts.from_headers[row.id],
                           set_aside=row.id in facts.set_aside, readmit=READMIT,
                           skipped_entries={d.split(" ", 1)[0]: d for ds in skipped.values() for d in ds},
                           unauthenticated=allowed is not None and tracetext.sender_authenticated(
                               trace, allowed.source, allowed.address) is False)


def global_rules(rows: list[MessageRow]) -> dict[int, tracetext.ListRule]:
    """Per message, the global list entry that decided for one of my addresses (or, for an admin
    looking at everyone's mail, for any recipient), if one did."""
    found = {}
    for row in rows:
        mine = [r.address for r in row.recipients if r.address in g.addresses or g.user.is_admin]
        if not mine:
            continue
        trace = tracetext.parse(row.trace)
        for address in mine:
            rule = tracetext.list_rule(trace, address, len(row.recipients) == 1)
            if rule is not None and rule.is_global:
                found[row.id] = rule
                break
    return found


def clues(reasons: str) -> list[str]:
    """The stored clues one by one: split where a probability ends, not at every space (a token
    such as ``x-mailer:microsoft cdo for windows 2000`` holds spaces); none when ``reasons`` is not
    a clue list (a recipient refused at RCPT keeps why there, which "Why" already shows)."""
    parts = _CLUE_END.split(reasons.strip()) if reasons.strip() else []
    return parts if all(_CLUE.fullmatch(p) for p in parts) else []


def _allow_address(row: MessageRow) -> Sender | None:
    """Whom "Always allow" adds for this message (``senders.allow_target``)."""
    target = allow_target(row.header_from, row.sender, row.trace)
    return target[0] if target is not None else None


def auth_step(trace: tracetext.Trace) -> str | None:
    """What the trace says was authenticated: the detail of its ``auth=`` step."""
    step = trace.find("auth")
    return f"{step.detail} ({step.outcome})" if step is not None else None


def skipped_allow(trace: tracetext.Trace) -> dict[str, list[str]]:
    """Per recipient, why allow entries that matched were not applied (the ``allow=skipped`` details)."""
    return {address: [s.detail for s in steps if s.step == "allow" and s.outcome == "skipped"]
            for address, steps in trace.recipients.items()}


def _my_recipient_addresses(row) -> list[str]:
    mine = [r.address for r in row.recipients if r.address in g.addresses]
    if not mine and g.user.is_admin:
        mine = [r.address for r in row.recipients]
    return mine


@bp.route("/<int:message_id>/list", methods=["GET", "POST"])
@login_required
def add_sender(message_id: int):
    """Block or always allow this message's sender (its From address, or that address's domain),
    for my addresses that got it.  The pattern comes from the message, never from the form.  A GET
    (a reload of the confirmation page, a login that lands here) adds nothing: the message's page."""
    row = message_or_404(message_id)
    if request.method == "GET":
        return redirect(url_for("messages.show", message_id=row.id))
    kind = request.form.get("kind")
    target = request.form.get("target", "address")
    if kind not in ("allow", "block") or target not in ("address", "domain"):
        abort(400)
    sender, why = sender_of(row), ""
    if kind == "allow":  # the address an allow entry can match for mail like this one
        sender, why = allow_target(row.header_from, row.sender, row.trace) or (None, "")
    if sender is None:
        flash("This message has no sender address to add.", "error")
        return redirect(url_for("messages.show", message_id=message_id))
    pattern = sender.address if target == "address" else sender.domain
    mine = _my_recipient_addresses(row)
    if kind == "block" and mine and not confirmed():  # a forged From of one's own address, say
        risks = risk_check(mine[0])(pattern)
        if risks:
            return ask_block(display(pattern), mine[0], risks, {"kind": kind, "target": target},
                             url_for("messages.show", message_id=message_id))
    done, problems = [], []
    for address in mine:
        try:
            with store().session() as s:
                entries.add_entry(s, address, kind, pattern, f"from message #{row.id}")
            done.append(address)
        except EntryError as exc:
            problems.append(f"{address}: {exc}")
    what = f"the {sender.source}" if target == "address" else f"the domain of the {sender.source}"
    if done:
        note, category = ("", "message") if kind == "block" else allow_note(row.trace, sender.check, sender.address)
        said = f"{display(pattern)} ({what}) is now on the {kind} list of {', '.join(map(display, done))}."
        flash(" ".join(part for part in (said, why, note) if part), category)
    for p in problems:
        flash(p, "error")
    if confirmed():  # from the confirmation page, whose address only takes a POST
        return redirect(url_for("messages.show", message_id=message_id))
    return _back()


@bp.route("/<int:message_id>/feedback", methods=["POST"])
@login_required
def feedback(message_id: int):
    row = message_or_404(message_id)
    verdict = request.form.get("is_spam")
    if verdict not in ("1", "0"):
        abort(400)
    if not row.tokens:  # refused before its content was read, or its content was never kept
        flash(NOTHING_KEPT, "error")
        return _back()
    with store().session() as s:
        messagelog.set_feedback(s, row.id, g.user.id, verdict == "1")
    later = (f"A model rollback set this message's mark aside: the filter does not learn from it until the "
             f"operator lets it in again ('{READMIT}')." if kept([row], [row.id]).set_aside
             else "The filter takes it in at its next learning run.")
    flash("Thanks: marked as " + ("spam" if verdict == "1" else "not spam") + ". " + later)
    return _back()


def _back():
    """Back to the page the form was on (only pages of this site), else recent mail."""
    url = request.referrer
    if url and url.startswith(request.host_url):
        return redirect(url)
    return redirect(url_for("messages.index"))
