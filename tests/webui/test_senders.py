"""Which sender the pages name, and which address "release and always allow" adds: the one an
allow entry will match for the next message like this one (webui.senders)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold.authres import AuthResults
from stronghold.classifier import Score
from stronghold.findings import Findings
from stronghold.lists import ListEntry, ListIndex, other_envelope
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import entries, messagelog, quarantine
from stronghold.store.tables import QuarantineItem
from stronghold.verdict import Action, Category, Envelope, Verdict
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import Auth
from webui.senders import allow_target

FROM = "news@shop.example"
BOUNCE = "bounce-4711@mailer.example"  # the mailing service's envelope sender
RCPT = "alice@example.com"
RAW = f"From: Shop News <{FROM}>\r\nSubject: Sale\r\n\r\nbuy now".encode()
POLICY = Policy(spam_action=Action.QUARANTINE, spam_action_high=Action.QUARANTINE)
# The From's domain signs (DKIM, aligned) and the mailing service's envelope domain passes SPF.
SIGNED = AuthResults("checked", spf="pass", spf_domain="mailer.example", dkim=(("shop.example", "pass"),),
                     from_domain="shop.example")
# Only SPF of the envelope domain passes: the From is not authenticated.
SPF_ONLY = AuthResults("checked", spf="pass", spf_domain="mailer.example", from_domain="shop.example")
NEITHER = AuthResults("checked", spf="softfail", spf_domain="mailer.example", from_domain="shop.example")


@pytest.fixture
def app(releasing_app: Flask) -> Flask:
    return releasing_app


def _verdict(auth: AuthResults, allowed: list[ListEntry]) -> Verdict:
    env = Envelope(BOUNCE, (RCPT,), queue_id="Q5")
    return decide(env, parse(RAW), Findings(lists=ListIndex(allowed), auth=auth, score=Score(0.999, ()),
                                            model_threshold=0.9), POLICY)


def _hold(app: Flask, auth: AuthResults) -> tuple[int, int]:
    """The message as the engine decides it, logged and held: (message id, item id)."""
    env = Envelope(BOUNCE, (RCPT,), queue_id="Q5")
    verdict = _verdict(auth, [])
    with app.extensions["stronghold_store"].session() as s:
        return (messagelog.record(s, env, parse(RAW), verdict, {"tok"}),
                quarantine.hold_verdict(s, env, verdict, RAW, "Sale")[0])


def _allow_entries(app: Flask) -> list[ListEntry]:
    with app.extensions["stronghold_store"].session() as s:
        return entries.entries(s, RCPT, "allow")


@pytest.mark.parametrize("auth_results, added, source", [(SIGNED, FROM, "From address"),
                                                 (SPF_ONLY, BOUNCE, "envelope sender"),
                                                 (NEITHER, FROM, "From address")],
                         ids=["from-signed", "only-envelope-spf", "neither"])
def test_release_and_allow_adds_what_the_allow_rule_matches(
        client: FlaskClient, auth: Auth, app: Flask, sink: SmtpSink,
        auth_results: AuthResults, added: str, source: str) -> None:
    _, item = _hold(app, auth_results)
    auth.login("alice")
    auth.post(f"/junk/{item}/allow", {}, "/junk/")
    page = client.get("/junk/").get_data(as_text=True)
    assert f"{added} (the {source}) is now on the allow list of {RCPT}." in page
    [entry] = _allow_entries(app)
    assert entry.pattern == added
    if source == "envelope sender":
        assert f"Not the From address {FROM}: it is not authenticated for this message" in page
    # The next message like it: the entry decides it where its sender can be authenticated at all.
    again = _verdict(auth_results, [entry])
    category = again.decisions[0].category
    assert category is (Category.SPAM if auth_results is NEITHER else Category.ALLOWED), again.summary()
    if auth_results is NEITHER:
        assert "which this message was not" in page  # and the flash said it would not apply


def test_messages_always_allow_adds_the_same_address(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mid, _ = _hold(app, SPF_ONLY)
    auth.login("alice")
    page = client.get(f"/messages/{mid}").get_data(as_text=True)
    assert f"Always allow {BOUNCE}</button>" in page and f"Block {FROM}</button>" in page  # what each adds
    assert f"Not the From address {FROM}: it is not authenticated" in page
    assert f'aria-label="Always allow sender {BOUNCE} (envelope sender)"' in client.get("/messages/").get_data(
        as_text=True)
    auth.post(f"/messages/{mid}/list", {"kind": "allow", "target": "address"}, "/messages/")
    assert [e.pattern for e in _allow_entries(app)] == [BOUNCE]
    assert f"Always allowed by {BOUNCE}" in client.get(f"/messages/{mid}").get_data(as_text=True)
    auth.post(f"/messages/{mid}/list", {"kind": "block", "target": "address"}, "/messages/")
    with app.extensions["stronghold_store"].session() as s:
        assert [e.pattern for e in entries.entries(s, RCPT, "block")] == [FROM]  # block: any address counts


def test_junk_and_recent_mail_name_the_same_sender(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mid, item = _hold(app, SIGNED)
    auth.login("alice")
    for url in ("/junk/", "/messages/", f"/junk/{item}", f"/messages/{mid}"):
        page = client.get(url).get_data(as_text=True)
        assert f"Shop News &lt;{FROM}&gt;" in page, url
        assert BOUNCE in page, url
    assert f'id="item-{item}"' in client.get("/junk/?q=shop.example").get_data(as_text=True)  # found by its From


def test_items_held_before_the_from_was_recorded_read_it_from_the_copy(
        client: FlaskClient, auth: Auth, app: Flask) -> None:
    with app.extensions["stronghold_store"].session() as s:
        [item] = quarantine.hold(s, RAW, recipients=[RCPT], sender=BOUNCE, subject="Sale", queue_id="Q6",
                                 score=0.99, category="spam", reason="spam", trace="", virus=None)
        row = s.get(QuarantineItem, item)
        assert row is not None
        row.header_from = None  # as held before migration 0008
    auth.login("alice")
    assert f"Shop News &lt;{FROM}&gt;" in client.get("/junk/").get_data(as_text=True)
    assert f"Shop News &lt;{FROM}&gt;" in client.get(f"/junk/{item}").get_data(as_text=True)


def test_sender_helpers() -> None:
    assert other_envelope(f"Shop <{FROM}>", BOUNCE) == BOUNCE
    assert other_envelope(f"Shop <{FROM.upper()}>", FROM) == ""
    assert other_envelope("", BOUNCE) == ""  # shown alone, not twice
    assert other_envelope(f"<{FROM}>", "") == "<>"  # a bounce's null sender is shown, not left out
    two = f"{FROM}, other@shop.example"  # allow entries ignore a From with two addresses
    target = allow_target(two, BOUNCE, None)
    assert target is not None and target[0].address == BOUNCE and target[0].check == "envelope"
    assert allow_target("", "", None) is None
