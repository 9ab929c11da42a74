"""The digest: who is due, what it says, and its signed single-use release links.

Mail goes to the SmtpSink harness here; tests/e2e/test_release_postfix.py sends
through a real Postfix release listener.
"""

from __future__ import annotations

import calendar
import email
import re
import time
from dataclasses import replace
from email.policy import default

import pytest

from devtools.localstack import free_port
from stronghold import digest
from stronghold.digest import DigestLinkError, compose, last_slot, make_link_token, redeem
from stronghold.store import accounts, quarantine
from stronghold.store.db import Store
from tests.harness.smtpsink import SmtpSink

MONDAY_9 = float(calendar.timegm((2026, 11, 30, 9, 0, 0)))  # a Monday, 09:00 UTC
assert time.gmtime(MONDAY_9).tm_wday == 0 and time.gmtime(MONDAY_9).tm_hour == 9




@pytest.fixture
def cfg(make_config, sink: SmtpSink):
    return make_config(release_smtp=f"127.0.0.1:{sink.port}", web_secret_key="k" * 64,
                       web_base_url="https://mail.example.net/stronghold", digest_hour=7)


def _user(store: Store, login: str, *addresses: str, every: str = "daily") -> None:
    with store.session() as s:
        user = accounts.add_user(s, login, "long enough password")
        for a in addresses:
            accounts.assign_address(s, user, a)
    if every != "daily":
        digest.set_choice(store, login, every)


def _hold(store: Store, raw: bytes, rcpt: str, ts: float, **kw) -> int:
    args = {"sender": "deals@spam.example", "subject": "Cheap <b>pills</b>", "queue_id": "QD",
            "score": 0.991, "category": "spam", "reason": "spam score 0.991", "trace": "model", "virus": None}
    args.update(kw)
    with store.session() as s:
        item = quarantine.hold(s, raw, recipients=[rcpt], **args)[0]
        from sqlalchemy import update

        from stronghold.store.tables import QuarantineItem
        s.execute(update(QuarantineItem).where(QuarantineItem.id == item).values(ts=ts))
    return item


def _digests(sink: SmtpSink) -> list:
    return [m for m in sink.messages if b"X-Stronghold-Digest:" in m.data]


def _links(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=default)
    text = msg.get_body(("plain",)).get_content()
    return re.findall(r"release: \S+/digest/release/(\S+)", text)


def test_slots_daily_and_weekly() -> None:
    assert last_slot(MONDAY_9, "daily", 7) == MONDAY_9 - 2 * 3600
    assert last_slot(MONDAY_9, "daily", 10) == MONDAY_9 - 23 * 3600  # Sunday 10:00
    assert last_slot(MONDAY_9 + 86400, "weekly", 7) == MONDAY_9 - 2 * 3600
    assert last_slot(MONDAY_9, "weekly", 10) == MONDAY_9 - 23 * 3600 - 6 * 86400  # the Monday before


def test_compose_lists_each_item_escaped_with_links_except_for_viruses(cfg) -> None:
    items = [quarantine.Held(7, "m3@example.com", "deals@spam.example", "Cheap <b>pills</b>\x1b[2J", "Q", MONDAY_9,
                             0.991, "spam", "spam score 0.991", "", None, 10, "0" * 64, None, None),
             quarantine.Held(8, "m3@example.com", "x@virus.example", "invoice", "Q", MONDAY_9, None, "virus",
                             "virus", "", "Eicar-Test-Signature", 10, "1" * 64, None, None)]
    msg = email.message_from_bytes(compose(cfg, "m3", "m3@example.com", items, MONDAY_9).as_bytes(),
                                   policy=default)
    assert msg["Subject"] == "Quarantine: 2 new messages held for you" and msg["To"] == "m3@example.com"
    assert msg["Auto-Submitted"] == "auto-generated"
    text = msg.get_body(("plain",)).get_content()
    markup = msg.get_body(("html",)).get_content()
    for part in (text, markup):
        assert "2026-11-30 09:00 UTC" in part and "deals@spam.example" in part and "0.991" in part
        assert "only an administrator can release it" in part and "\x1b" not in part
    assert "Cheap <b>pills</b>" in text and "Cheap &lt;b&gt;pills&lt;/b&gt;" in markup and "<b>" not in markup
    links = re.findall(r'href="https://mail\.example\.net/stronghold/digest/release/([^"]+)"', markup)
    assert len(links) == 1 and _links(msg.as_bytes()) == links
    assert digest.verify(cfg, links[0]) == (7, "m3@example.com")


def test_compose_names_the_from_with_a_differing_envelope_sender(cfg) -> None:
    """The same two the Junk page shows: the From people recognise, the envelope sender where it differs."""
    held = quarantine.Held(9, "m3@example.com", "bounce-17@mailer.example", "Sale", "Q", MONDAY_9, 0.99, "spam",
                           "spam", "", None, 10, "2" * 64, None, None, header_from="Shop <news@shop.example>")
    same = replace(held, id=10, sender="NEWS@shop.example")
    idn = replace(held, id=11, sender="info@xn--bcher-kva.example", header_from="Bücher <info@bücher.example>")
    msg = email.message_from_bytes(compose(cfg, "m3", "m3@example.com", [held, same, idn], MONDAY_9).as_bytes(),
                                   policy=default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "from: Shop <news@shop.example>\n  subject: Sale" in text  # the second: its envelope sender is the From
    assert "from: Bücher <info@bücher.example>\n  subject: Sale" in text  # the same address, its domain as A-labels
    assert "from: Shop <news@shop.example>\n  envelope sender: bounce-17@mailer.example\n" in text
    assert "Shop &lt;news@shop.example&gt; (envelope sender bounce-17@mailer.example)" in \
        msg.get_body(("html",)).get_content()


def test_compose_never_names_an_address_like_display_name_as_the_sender(cfg) -> None:
    """As the Junk page: the real address, the name that looks like another one only in a warning; a
    bounce's null envelope sender shown."""
    held = quarantine.Held(9, "m3@example.com", "", "Sale", "Q", MONDAY_9, 0.99, "spam", "spam", "", None, 10,
                           "2" * 64, None, None, header_from="boss@bank.example <evil@attacker.example>")
    msg = email.message_from_bytes(compose(cfg, "m3", "m3@example.com", [held], MONDAY_9).as_bytes(), policy=default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert ('from: evil@attacker.example [its display name "boss@bank.example" looks like another address: it '
            'is not the sender]\n  envelope sender: <> (bounce)\n') in text


def test_compose_shows_hidden_and_reordering_characters_as_the_junk_page_does(cfg) -> None:
    """The digest is a page of strangers' text too: a right-to-left override in a subject or a sender's
    name ("Invoice <RLO>fdp.exe" reads "Invoice exe.pdf") or a zero-width space shows as U+FFFD."""
    held = quarantine.Held(9, "m3@example.com", "deals@spam.example", "Invoice \u202efdp.exe", "Q", MONDAY_9,
                           0.99, "spam", "spam \u2066reason", "", None, 10, "2" * 64, None, None,
                           header_from="Pay\u200bPal \u202eService <deals@spam.example>")
    msg = email.message_from_bytes(compose(cfg, "m3", "m3@example.com", [held], MONDAY_9).as_bytes(), policy=default)
    for part in (msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()):
        assert not set(part) & {"\u202e", "\u200b", "\u2066"}
        assert "Invoice \ufffdfdp.exe" in part and "Pay\ufffdPal \ufffdService" in part


def test_run_sends_once_per_period_only_new_items(store: Store, cfg, sink: SmtpSink) -> None:
    _user(store, "m3", "m3@example.com")
    _user(store, "m1", "m1@example.com", every="off")
    _user(store, "weekly", "w@example.com", every="weekly")
    first = _hold(store, b"Subject: one\r\n\r\nx", "m3@example.com", MONDAY_9 - 3600)
    _hold(store, b"Subject: m1\r\n\r\nx", "m1@example.com", MONDAY_9 - 3600)
    _hold(store, b"Subject: w\r\n\r\nx", "w@example.com", MONDAY_9 - 3600)

    dry = digest.run(cfg, store, dry_run=True, now=MONDAY_9)
    assert [(r.login, r.items, r.outcome) for r in dry] == [("m3", 1, "dry run"), ("weekly", 1, "dry run")]
    assert _digests(sink) == []

    reports = digest.run(cfg, store, now=MONDAY_9)
    assert [(r.login, r.to, r.items, r.outcome) for r in reports] == [
        ("m3", "m3@example.com", 1, "sent"), ("weekly", "w@example.com", 1, "sent")]
    got = {m.recipients[0]: m for m in _digests(sink)}
    assert set(got) == {"m3@example.com", "w@example.com"} and got["m3@example.com"].sender == cfg.digest_sender
    assert digest.verify(cfg, _links(got["m3@example.com"].data)[0]) == (first, "m3@example.com")

    assert [r.outcome for r in digest.run(cfg, store, now=MONDAY_9 + 3600)] == ["not due", "not due"]
    assert len(_digests(sink)) == 2

    second = _hold(store, b"Subject: two\r\n\r\nx", "m3@example.com", MONDAY_9 + 7200)
    reports = digest.run(cfg, store, now=MONDAY_9 + 86400)  # Tuesday 09:00: m3's next day
    assert [(r.login, r.items, r.outcome) for r in reports] == [("m3", 1, "sent"), ("weekly", 0, "not due")]
    newest = _digests(sink)[-1]
    assert [digest.verify(cfg, t)[0] for t in _links(newest.data)] == [second]
    assert [r.outcome for r in digest.run(cfg, store, now=MONDAY_9 + 2 * 86400)] == ["nothing new", "not due"]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_digest_that_cannot_be_sent_is_sent_by_the_next_run(store: Store, make_config, sink: SmtpSink) -> None:
    _user(store, "m3", "m3@example.com")
    _hold(store, b"Subject: one\r\n\r\nx", "m3@example.com", MONDAY_9 - 3600)
    down = make_config(release_smtp=f"127.0.0.1:{free_port()}", web_secret_key="k" * 64)
    assert digest.run(down, store, now=MONDAY_9)[0].outcome.startswith("failed")
    up = make_config(release_smtp=f"127.0.0.1:{sink.port}", web_secret_key="k" * 64)
    assert digest.run(up, store, now=MONDAY_9 + 60)[0].outcome == "sent"
    assert len(_digests(sink)) == 1


def test_link_releases_once_and_stale_or_altered_links_change_nothing(store: Store, cfg, sink: SmtpSink) -> None:
    _user(store, "m3", "m3@example.com")
    now = time.time()
    item = _hold(store, b"From: deals@spam.example\r\nSubject: keep me\r\n\r\nbody\r\n", "m3@example.com", now - 60)
    other = _hold(store, b"Subject: old link\r\n\r\nx", "m3@example.com", now - 60)
    assert digest.run(cfg, store)[0].outcome == "sent"
    token = next(t for t in _links(_digests(sink)[0].data) if digest.verify(cfg, t)[0] == item)

    def state() -> list[tuple[float | None, int]]:
        with store.session() as s:
            rows = [quarantine.get(s, i) for i in (item, other)]
        released = [m for m in sink.messages if b"X-Stronghold-Released" in m.data]
        return [(r.released if r else None, len(released)) for r in rows]

    before = state()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    variants = [token[:pos] + next(c for c in alphabet if c != token[pos]) + token[pos + 1:]
                for pos in range(len(token))]
    variants += [token[:-1] + c for c in alphabet if c != token[-1]]  # base64 slack in the last character
    for changed in variants:  # every single-character change is refused
        with pytest.raises(DigestLinkError) as err:
            redeem(cfg, store, changed)
        assert err.value.kind == "forged" and "not valid" in err.value.reason
    for bad in (token[:-1], token + "A", "", "x" * 1000):
        with pytest.raises(DigestLinkError, match="not valid"):
            redeem(cfg, store, bad)
    expired = make_link_token(cfg, other, "m3@example.com", now=now - 8 * 86400)
    with pytest.raises(DigestLinkError, match="expired") as err:
        redeem(cfg, store, expired)
    assert err.value.kind == "expired"
    wrong_key = make_link_token(cfg.__class__(**{**cfg.__dict__, "web_secret_key": "z" * 64}), item,
                                "m3@example.com")
    with pytest.raises(DigestLinkError, match="not valid"):
        redeem(cfg, store, wrong_key)
    assert state() == before

    held = redeem(cfg, store, token)
    assert held.id == item and held.released_by == "digest link (m3@example.com)" and held.delivered
    released = [m for m in sink.messages if b"X-Stronghold-Released" in m.data]
    assert len(released) == 1 and released[0].recipients == ["m3@example.com"] and b"keep me" in released[0].data
    after = state()
    with pytest.raises(DigestLinkError, match="already released") as err:
        redeem(cfg, store, token)
    assert err.value.kind == "used" and state() == after

    with store.session() as s:
        quarantine.delete(s, other)
    with pytest.raises(DigestLinkError, match="no longer in the quarantine"):
        redeem(cfg, store, make_link_token(cfg, other, "m3@example.com"))
    with pytest.raises(DigestLinkError, match="no longer in the quarantine"):
        redeem(cfg, store, make_link_token(cfg, item, "m1@example.com"))  # not that recipient's item


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_virus_links_are_refused(store: Store, cfg) -> None:
    item = _hold(store, b"x", "m3@example.com", time.time(), category="virus", virus="Eicar")
    with pytest.raises(DigestLinkError, match="only an administrator") as err:
        redeem(cfg, store, make_link_token(cfg, item, "m3@example.com"))
    assert err.value.kind == "virus"


def test_an_admins_digest_counts_what_was_held_for_nobody(store: Store, cfg, sink: SmtpSink) -> None:
    """Mail held for a disabled user (or an address nobody has) is in no one's own digest; an admin's
    digest says how much of it came in, and where to review it."""
    _user(store, "m3", "m3@example.com")
    _user(store, "boss", "postmaster@example.com")
    with store.session() as s:
        boss = accounts.get_user(s, "boss")
        assert boss is not None
        boss.role = "admin"
        m3 = accounts.get_user(s, "m3")
        assert m3 is not None
        accounts.set_disabled(m3, True)
    _hold(store, b"Subject: for m3\r\n\r\nx", "m3@example.com", MONDAY_9 - 3600)
    _hold(store, b"Subject: for nobody\r\n\r\nx", "gone@example.com", MONDAY_9 - 1800)
    _hold(store, b"Subject: too old\r\n\r\nx", "gone@example.com", MONDAY_9 - 3 * 86400)
    reports = digest.run(cfg, store, now=MONDAY_9)
    assert [(r.login, r.items, r.outcome) for r in reports] == [("boss", 0, "sent")]
    [mail] = _digests(sink)
    msg = email.message_from_bytes(mail.data, policy=default)
    assert mail.recipients == ["postmaster@example.com"]
    assert msg["Subject"] == "Quarantine: 0 new messages held for you, 2 for nobody"
    text = msg.get_body(("plain",)).get_content()
    assert "Nothing addressed to you was held" in text
    assert ("2 newly held messages were for disabled users or addresses no user has: only administrators "
            "see them. Release or delete them at https://mail.example.net/stronghold/junk/?unattended=1") in text
    assert "for m3" not in text and _links(mail.data) == []  # no release links for someone else's mail
    assert [r.outcome for r in digest.run(cfg, store, now=MONDAY_9 + 86400)] == ["nothing new"]


def test_compose_shows_scores_to_four_places_as_the_web_ui(cfg) -> None:
    """0.9998 read "1.000" in the digest (the Junk page says 0.9998; no score is ever 1)."""
    held = quarantine.Held(12, "m3@example.com", "a@spam.example", "Rates", "Q", MONDAY_9, 0.99978, "spam",
                           "spam", "", None, 10, "3" * 64, None, None)
    msg = email.message_from_bytes(compose(cfg, "m3", "m3@example.com", [held], MONDAY_9).as_bytes(), policy=default)
    for part in (msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()):
        assert "0.9998" in part and "1.000" not in part
