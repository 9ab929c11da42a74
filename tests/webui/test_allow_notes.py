"""Allowing a sender from one message says whether the entry will work for mail like it; the
message page says when an allow entry matched but was skipped (sender not authenticated)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold.authres import AuthResults
from stronghold.classifier import Score
from stronghold.findings import Findings
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import entries, messagelog, quarantine
from stronghold.verdict import Action, Envelope
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import Auth
from webui.tracetext import parse as parse_trace
from webui.tracetext import sender_authenticated

SENDER = "verkauf@promo.example"
RCPT = "alice@example.com"


@pytest.fixture
def app(releasing_app: Flask) -> Flask:
    """Releases go to the SMTP sink."""
    return releasing_app


def flashes(client: FlaskClient) -> str:
    return client.get("/junk/").get_data(as_text=True)


def _log(app: Flask, auth: AuthResults | None, allow_entry: int | None = None) -> tuple[int, int]:
    """A spam message from SENDER to RCPT as the engine decides it (auth: what was checked, if
    anything), logged and quarantined: (message id, quarantine item id)."""
    raw = f"From: {SENDER}\r\nSubject: Angebot\r\n\r\nkaufen".encode()
    msg = parse(raw)
    env = Envelope(SENDER, (RCPT,), queue_id="Q7")
    index = ListIndex([ListEntry(allow_entry, RCPT, "allow", SENDER)] if allow_entry else [])
    verdict = decide(env, msg, Findings(lists=index, auth=auth, score=Score(0.999, ()), model_threshold=0.9),
                     Policy(spam_action=Action.QUARANTINE, spam_action_high=Action.QUARANTINE))
    with app.extensions["stronghold_store"].session() as s:
        return (messagelog.record(s, env, msg, verdict, {"tok"}),
                quarantine.hold_verdict(s, env, verdict, raw, "Angebot")[0])


def test_release_and_allow_warns_when_the_sender_was_not_authenticated(
        client: FlaskClient, auth: Auth, app: Flask, sink: SmtpSink) -> None:
    _, item = _log(app, AuthResults("checked", spf="none"))
    auth.login("alice")
    auth.post(f"/junk/{item}/allow", {}, "/junk/")
    page = flashes(client)
    assert f"{SENDER} (the From address) is now on the allow list of {RCPT}" in page
    assert "which this message was not: mail like it will still be filtered" in page
    assert "flash-warning" in page


def test_release_and_allow_of_an_authenticated_sender_promises_nothing_more(
        client: FlaskClient, auth: Auth, app: Flask, sink: SmtpSink) -> None:
    _, item = _log(app, AuthResults("checked", spf="pass", spf_domain="promo.example"))
    auth.login("alice")
    auth.post(f"/junk/{item}/allow", {}, "/junk/")
    page = flashes(client)
    assert f"{SENDER} (the From address) is now on the allow list of {RCPT}." in page
    assert "SPF/DKIM" not in page and "flash-warning" not in page


def test_release_and_allow_unchecked_sender_says_the_entry_needs_authentication(
        client: FlaskClient, auth: Auth, app: Flask, sink: SmtpSink) -> None:
    _, item = _log(app, None)
    auth.login("alice")
    auth.post(f"/junk/{item}/allow", {}, "/junk/")
    page = flashes(client)
    assert "It applies only when the sender is authenticated (SPF/DKIM); whether" in page


def test_messages_allow_button_warns_too(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mid, _ = _log(app, AuthResults("checked", spf="none"))
    auth.login("alice")
    auth.post(f"/messages/{mid}/list", {"kind": "allow", "target": "address"}, "/messages/")
    page = client.get(f"/messages/{mid}").get_data(as_text=True)
    assert "is now on the allow list of alice@example.com" in page
    assert "which this message was not" in page
    auth.post(f"/messages/{mid}/list", {"kind": "block", "target": "domain"}, "/messages/")
    assert "which this message was not" not in client.get(f"/messages/{mid}").get_data(as_text=True)


def test_message_page_says_an_allow_entry_was_skipped(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("alice")
    r = auth.post(f"/lists/{RCPT}/add", {"kind": "allow", "pattern": SENDER})
    assert r.status_code == 302
    with app.extensions["stronghold_store"].session() as s:
        entry = entries.entries(s, RCPT, "allow")[0].id
    mid, _ = _log(app, AuthResults("checked", spf="none"), allow_entry=entry)
    page = client.get(f"/messages/{mid}").get_data(as_text=True)
    assert "Always allowed" not in page
    assert f"but skipped for this message: #{entry} envelope sender {SENDER} not authenticated" in page
    why = page[page.index("<h2>Why</h2>"):page.index("</ul>", page.index("<h2>Why</h2>"))]
    assert f"An allow entry matched but was skipped: #{entry} envelope sender {SENDER} not authenticated " \
           "(spf=none dkim=none)." in why


def test_trace_reading() -> None:
    trace = ("auth=header mx.example(spf=fail(fail.example) dkim=pass(trusted.example),fail(x.example)) "
             "score=spam(0.99>=0.9) rcpt=<A@b.example>:quarantine(spam (high score))"
             "[allow=skipped(#3 envelope sender v@p.example not authenticated (spf=none dkim=none))][x=y]")
    parsed = parse_trace(trace)
    assert parsed.find("auth") is not None and parsed.find("auth").outcome == "header mx.example"  # type: ignore[union-attr]
    assert [s.step for s in parsed.recipients["a@b.example"]] == ["allow", "x"]
    assert sender_authenticated(trace, "envelope", "v@p.example") is False
    assert sender_authenticated(trace, "from", "boss@trusted.example") is True
    assert sender_authenticated(trace, "from", "boss@other.example") is False
    assert sender_authenticated(trace, "envelope", "bounce@fail.example") is False
    assert sender_authenticated("score=spam(0.99>=0.9)", "from", "boss@trusted.example") is None
