"""The quarantine digest: a mail listing each user's newly held messages, with release links.

Links: ``<web_base_url>/digest/release/<token>``.  The token is the item id and
its recipient, signed with the web UI's secret key (itsdangerous, HMAC) and
time-stamped; it is refused when its signature does not match byte for byte
(forged or altered), when it is older than ``digest_link_days`` (expired), or
when the item was released already (used: the item's atomic release claim is
what makes a link single-use, so a link and the Junk page cannot both release
the same copy) or is gone (deleted, purged).  Checking a link changes nothing;
only ``redeem`` releases.

Schedule: a user whose ``digest`` is daily (weekly) is due once the day's
(Monday's) ``digest_hour`` (UTC) has passed since their last digest;
``users.digest_sent`` records when the last one covered up to, and is claimed
with a conditional UPDATE before sending, so ``stronghold digest`` can run as
often as you like, from several hosts at once, and each digest goes out once.
``stronghold web`` runs it every ``digest_check_minutes`` (the web UI has the
key and serves the links: a digest whose links no server answers is no use).
Without the web process, a timer does it::

    # /etc/cron.d/stronghold
    */15 * * * * stronghold stronghold digest
    # or a systemd timer: OnCalendar=*:0/15, ExecStart=/usr/bin/stronghold digest

Digest mail goes through ``release_smtp`` (unfiltered) from ``digest_sender``.
The milter never sends mail.
"""

from __future__ import annotations

import calendar
import hmac
import html
import logging
import re
import smtplib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from stronghold.config import Config
from stronghold.lists import envelope_shown, other_envelope, shown_from
from stronghold.release import OutcomeUnknown, ReleaseError, release, smtp_send
from stronghold.safetext import visible
from stronghold.store import accounts, quarantine
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.store.quarantine import Held
from stronghold.webkey import secret_key

log = logging.getLogger(__name__)
SALT = "stronghold.digest.release"
MAX_ITEMS = 200
PERIODS = {"daily": 86400, "weekly": 7 * 86400}
CHOICES = ("off", "daily", "weekly")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DigestError(Exception):
    """A digest run cannot start (one-line message)."""


class DigestLinkError(Exception):
    """A digest link is refused; ``reason`` is a sentence for the user, ``kind`` one of
    forged / expired / used / unknown / virus / failed."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


# -- links ---------------------------------------------------------------------

def _serializer(cfg: Config, at: float | None = None) -> URLSafeTimedSerializer:
    if at is None:
        return URLSafeTimedSerializer(secret_key(cfg), salt=SALT)
    stamp = int(at)

    class FixedClock(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret_key(cfg), salt=SALT, signer=FixedClock)


def make_link_token(cfg: Config, item_id: int, recipient: str, *, now: float | None = None) -> str:
    """A signed token naming one item for one recipient (``now`` only for tests: an old link)."""
    return str(_serializer(cfg, now).dumps([int(item_id), recipient.strip().lower()]))


def link_url(cfg: Config, token: str) -> str:
    return f"{cfg.web_base_url}/digest/release/{token}"


def verify(cfg: Config, token: str) -> tuple[int, str]:
    """(item id, recipient) of a genuine, unexpired token; DigestLinkError otherwise. Reads nothing."""
    forged = DigestLinkError("This release link is not valid: it may have been cut short or altered. "
                             "Use the Junk page instead.", "forged")
    if not isinstance(token, str) or len(token) > 400:
        raise forged
    try:
        payload, signed_at = _serializer(cfg).loads(token, max_age=cfg.digest_link_days * 86400,
                                                    return_timestamp=True)
    except SignatureExpired as exc:
        raise DigestLinkError(f"This release link has expired (links work for {cfg.digest_link_days} days). "
                              "Use the Junk page instead.", "expired") from exc
    except BadData as exc:
        raise forged from exc
    if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], int)
            and isinstance(payload[1], str)):
        raise forged
    # Base64 ignores a few bits in a token's last character; insist on the exact bytes we issued.
    canonical = _serializer(cfg, calendar.timegm(signed_at.utctimetuple())).dumps(payload)
    if not hmac.compare_digest(str(canonical), token):
        raise forged
    return payload[0], payload[1]


def check(cfg: Config, store: Store, token: str) -> Held:
    """The item a link would release, if it still can; changes nothing."""
    item_id, recipient = verify(cfg, token)
    with store.session() as s:
        held = quarantine.get(s, item_id)
    if held is None or held.recipient != recipient:
        raise DigestLinkError("This message is no longer in the quarantine (deleted or expired).", "unknown")
    if held.released is not None:
        raise DigestLinkError(f"This message was already released on "
                              f"{time.strftime('%Y-%m-%d at %H:%M UTC', time.gmtime(held.released))}; "
                              "it was delivered once and will not be sent again.", "used")
    if held.is_virus:
        raise DigestLinkError("This message carries a virus: only an administrator can release it.", "virus")
    return held


def redeem(cfg: Config, store: Store, token: str) -> Held:
    """Release the item a link names (once); DigestLinkError says why not."""
    held = check(cfg, store, token)
    try:
        return release(cfg, store, held.id, f"digest link ({held.recipient})")
    except ReleaseError as exc:
        with store.session() as s:
            now = quarantine.get(s, held.id)
        if now is not None and now.released is not None:
            raise DigestLinkError("This message was already released; it will not be sent again.", "used") from exc
        raise DigestLinkError("The mail system could not deliver the message just now; nothing was sent. "
                              "Try the link again in a few minutes.", "failed") from exc


# -- composing -------------------------------------------------------------------

def _clean(text: str, limit: int = 200) -> str:
    """A stranger's text on one line: controls as spaces, hidden and reordering characters as
    U+FFFD (``safetext.visible``, as the Junk page shows them)."""
    return visible(_CONTROL.sub(" ", text))[:limit]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _senders(held: Held) -> tuple[str, str]:
    """(the From as the Junk page shows it, its warnings in brackets, else the envelope sender; the
    envelope sender when it is not the From's address, else ""): the same two the Junk page shows
    (``lists.shown_from``, ``lists.other_envelope``; ``<> (bounce)`` for a null sender)."""
    shown = shown_from(held.header_from)
    if not shown.text:
        return _clean(envelope_shown(held.sender)), ""
    other = other_envelope(held.header_from, held.sender)
    return (_clean(shown.text + "".join(f" [{w}]" for w in shown.warnings), 400),
            _clean(envelope_shown(other)) if other else "")


def compose(cfg: Config, login: str, to: str, items: Sequence[Held], now: float | None = None,
            more: int = 0, unattended: int = 0) -> EmailMessage:
    """The digest mail: a plain-text part and an HTML part (no remote content, everything escaped).
    ``unattended`` (admins): how many newly held messages no enabled user sees."""
    now = time.time() if now is None else now
    n = len(items) + more
    rows_text, rows_html = [], []
    for h in items:
        score = f"{h.score:.4f}" if h.score is not None else "-"  # as the web UI: 0.9998 is not 1.000
        if h.is_virus:
            action_text = f"virus {h.virus or ''}: only an administrator can release it"
            action_html = html.escape(action_text)
        else:
            url = link_url(cfg, make_link_token(cfg, h.id, h.recipient))
            action_text = f"release: {url}"
            action_html = f'<a href="{html.escape(url)}">Release</a>'
        shown, envelope = _senders(h)
        via = f"\n  envelope sender: {envelope}" if envelope else ""
        rows_text.append(f"{_when(h.ts)}  to {h.recipient}\n  from: {shown}{via}\n"
                         f"  subject: {_clean(h.subject)}\n  score: {score}  why: {_clean(h.reason)}\n"
                         f"  {action_text}\n")
        cells = (_when(h.ts), h.recipient, shown + (f" (envelope sender {envelope})" if envelope else ""),
                 _clean(h.subject), score)
        rows_html.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in cells)
                         + f"<td>{action_html}</td></tr>")
    intro = (f"{n} message{'s' if n != 1 else ''} addressed to you {'were' if n != 1 else 'was'} held in the "
             "quarantine since your last digest. If one is mail you want, release it: it is delivered to "
             f"your inbox once. Links work for {cfg.digest_link_days} days; held mail is deleted after "
             f"{cfg.quarantine_retention_days} days.") if n else \
        "Nothing addressed to you was held in the quarantine since your last digest."
    tail = f"\n... and {more} more: see {cfg.web_base_url}/\n" if more else ""
    admins = (f"{unattended} newly held message{'s were' if unattended != 1 else ' was'} for disabled users or "
              "addresses no user has: only administrators see them. Release or delete them at "
              f"{cfg.web_base_url}/junk/?unattended=1" if unattended else "")
    if admins:
        tail += f"\n{admins}\n"
    footer = f"To change how often you get this mail, see {cfg.web_base_url}/"
    text = f"{intro}\n\n" + "\n".join(rows_text) + tail + f"\n-- \n{footer}\n"
    markup = ("<!DOCTYPE html><html><body>"
              f"<p>{html.escape(intro)}</p>"
              + ("<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">"
                 "<tr><th>Date</th><th>To</th><th>From</th><th>Subject</th><th>Score</th><th></th></tr>"
                 + "".join(rows_html) + "</table>" if rows_html else "")
              + (f"<p>... and {more} more: see {html.escape(cfg.web_base_url)}/</p>" if more else "")
              + (f"<p>{html.escape(admins)}</p>" if admins else "")
              + f"<p>{html.escape(footer)}</p></body></html>")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Mail Stronghold <{cfg.digest_sender}>"
    msg["To"] = to
    msg["Subject"] = f"Quarantine: {n} new message{'s' if n != 1 else ''} held for you" + (
        f", {unattended} for nobody" if unattended else "")
    msg["Date"] = formatdate(now)
    msg["Message-ID"] = make_msgid("digest", cfg.digest_sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Stronghold-Digest"] = login
    msg.set_content(text)
    msg.add_alternative(markup, subtype="html")
    return msg


# -- who is due, and the run -----------------------------------------------------------

def last_slot(now: float, every: str, hour: int) -> float:
    """The most recent moment a digest of this kind was scheduled (UTC)."""
    slot = now // 86400 * 86400 + hour * 3600
    if slot > now:
        slot -= 86400
    if every == "weekly":
        slot -= time.gmtime(slot).tm_wday * 86400  # back to Monday
    return slot


@dataclass(frozen=True)
class DigestReport:
    login: str
    to: str
    items: int
    outcome: str  # sent / nothing new / not due / dry run / failed: why


def _address_of(login: str, addresses: Mapping[str, float]) -> str:
    """Where a user's digest goes: their login if it is one of their addresses, else the first."""
    return login if login in addresses else next(iter(addresses))


def _claim_user(store: Store, user_id: int, old: float | None, now: float) -> bool:
    with store.session() as s:
        return accounts.claim_digest(s, user_id, old, now)


def _unclaim_user(store: Store, user_id: int, old: float | None, now: float) -> None:
    with store.session() as s:
        accounts.unclaim_digest(s, user_id, old, now)


def _pending(store: Store, addresses: Mapping[str, float], since: float, until: float) -> tuple[list[Held], int]:
    """Unreleased items held for ``addresses`` ({address: since when it is the user's}) in [since, until)."""
    with store.session() as s:
        found = quarantine.find(s, recipients=list(addresses), since=since, until=until, limit=10_000,
                                owned_since=addresses)
    fresh = [h for h in found if h.released is None]
    return fresh[:MAX_ITEMS], max(0, len(fresh) - MAX_ITEMS)


def _candidates(store: Store, only: str | None) -> list[tuple[int, str, str, float | None, dict[str, float], bool]]:
    with store.session() as s:
        users = accounts.digest_users(s, only)
        if only and not users:
            raise DigestError(f"no enabled user {only} with a digest")
        return [(u.id, u.login, u.digest, u.digest_sent, _owned(u), u.role == "admin") for u in users]


def _unattended(store: Store, admin: bool, since: float, until: float) -> int:
    """For an admin's digest: items held in [since, until) that no enabled user sees."""
    if not admin:
        return 0
    with store.session() as s:
        return quarantine.count_unattended(s, since=since, until=until)


def _owned(user: accounts.User) -> dict[str, float]:
    """{address: since when it is this user's}, in ``owned_addresses`` order."""
    since = accounts.owned_since(user)
    return {a: since.get(a, 0.0) for a in accounts.owned_addresses(user)}


def run(cfg: Config, store: Store, *, dry_run: bool = False, only: str | None = None,
        now: float | None = None) -> list[DigestReport]:
    """Send every due user their digest (or, dry, say what would be sent); one report per user."""
    now = time.time() if now is None else now
    reports = []
    for user_id, login, every, sent, addresses, admin in _candidates(store, only):
        if not addresses or every not in PERIODS:
            continue
        to = _address_of(login, addresses)
        if sent is not None and sent >= last_slot(now, every, cfg.digest_hour):
            reports.append(DigestReport(login, to, 0, "not due"))
            continue
        start = sent if sent is not None else now - PERIODS[every]
        items, more = _pending(store, addresses, start, now)
        unattended = _unattended(store, admin, start, now)
        if dry_run:
            reports.append(DigestReport(login, to, len(items) + more, "dry run"))
            continue
        if not _claim_user(store, user_id, sent, now):
            reports.append(DigestReport(login, to, 0, "not due"))  # another run just did it
            continue
        if not items and not unattended:
            reports.append(DigestReport(login, to, 0, "nothing new"))
            continue
        data = compose(cfg, login, to, items, now, more, unattended).as_bytes()
        try:
            smtp_send(cfg.release_smtp, cfg.digest_sender, [to], data)
        except OutcomeUnknown as exc:  # perhaps sent: do not send twice
            log.error("digest for %s: delivery not confirmed (%s)", login, exc)
            reports.append(DigestReport(login, to, len(items) + more, f"failed: not confirmed ({exc})"))
            continue
        except (smtplib.SMTPException, OSError) as exc:
            _unclaim_user(store, user_id, sent, now)
            log.warning("digest for %s not sent: %s", login, exc)
            reports.append(DigestReport(login, to, len(items) + more, f"failed: {exc}"))
            continue
        log.info("digest for %s sent to %s: %d messages", login, to, len(items) + more)
        reports.append(DigestReport(login, to, len(items) + more, "sent"))
    return reports


def preview(cfg: Config, store: Store, *, only: str | None = None, now: float | None = None) -> list[str]:
    """The text part each due user would get now (``--dry-run --show``)."""
    now = time.time() if now is None else now
    texts = []
    for _uid, login, every, sent, addresses, admin in _candidates(store, only):
        if not addresses or every not in PERIODS or (sent is not None
                                                     and sent >= last_slot(now, every, cfg.digest_hour)):
            continue
        start = sent if sent is not None else now - PERIODS[every]
        items, more = _pending(store, addresses, start, now)
        unattended = _unattended(store, admin, start, now)
        if items or unattended:
            body = compose(cfg, login, _address_of(login, addresses), items, now, more,
                           unattended).get_body(("plain",))
            texts.append(f"== {login}\n{body.get_content() if body is not None else ''}")
    return texts


def set_choice(store: Store, login: str, choice: str) -> None:
    """A user's digest setting: off, daily or weekly."""
    if choice not in CHOICES:
        raise DigestError(f"digest must be one of {', '.join(CHOICES)}")
    with store.session() as s:
        user = accounts.get_user(s, login)
        if user is None:
            raise DigestError(f"no user {login}")
        user.digest = choice


class Scheduler:
    """Runs ``run`` every ``digest_check_minutes`` in a daemon thread (used by ``stronghold web``)."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="digest", daemon=True)

    def start(self) -> Scheduler:
        if self.cfg.digest_check_minutes > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                run(self.cfg, self.store)
            except (StoreError, DigestError) as exc:
                log.warning("digest run failed: %s", exc)
            self._stop.wait(self.cfg.digest_check_minutes * 60)

    def stop(self) -> None:
        self._stop.set()
