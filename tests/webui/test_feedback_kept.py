"""Feedback is offered only where the filter can learn from it: a message refused at RCPT
time (no content kept) gets no buttons, a note, and a forged POST records nothing."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold import feedback
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import messagelog, quarantine
from stronghold.verdict import Envelope
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import Auth
from tests.webui.test_webui import _log_message


@pytest.fixture
def app(releasing_app: Flask) -> Flask:
    """Releases go to the SMTP sink."""
    return releasing_app


def _refused(app: Flask) -> int:
    env = Envelope("spammer@bad.example", ("alice@example.com",), queue_id="Q9")
    entry = messagelog.rcpt_reject_entry(env, "alice@example.com", "sender blocked", "block=rcpt(#1)")
    with app.extensions["stronghold_store"].session() as s:
        return messagelog.write(s, [entry])[0]


def test_no_feedback_buttons_without_stored_content(client: FlaskClient, auth: Auth, app: Flask) -> None:
    refused, kept = _refused(app), _log_message(app, ("alice@example.com",), "kept one")
    auth.login("alice")
    detail = client.get(f"/messages/{refused}").get_data(as_text=True)
    assert "This is spam" not in detail and "Not spam" not in detail
    assert "Nothing of this message&#39;s content was kept, so there is nothing to learn from." in detail
    assert "This is spam" in client.get(f"/messages/{kept}").get_data(as_text=True)
    listing = client.get("/messages/").get_data(as_text=True)
    assert listing.count(f'action="/messages/{refused}/feedback"') == 0
    assert listing.count(f'action="/messages/{kept}/feedback"') == 2
    assert "content not kept: nothing to learn from" in listing


def test_feedback_post_on_a_message_without_content_records_nothing(client: FlaskClient, auth: Auth,
                                                                    app: Flask) -> None:
    refused = _refused(app)
    auth.login("alice")
    auth.post(f"/messages/{refused}/feedback", {"is_spam": "1"}, "/messages/")
    page = client.get("/messages/").get_data(as_text=True)
    assert "takes it in at its next learning run" not in page
    assert "nothing to learn from." in page
    with app.extensions["stronghold_store"].session() as s:
        assert messagelog.pending(s) == []
    items, _ = feedback.pending_items(app.extensions["stronghold_store"])
    assert items == []


def test_junk_not_spam_without_stored_content_says_so(client: FlaskClient, auth: Auth, app: Flask,
                                                      sink: SmtpSink) -> None:
    raw = b"From: news@shop.example\r\nSubject: receipt\r\n\r\nthanks"
    env = Envelope("news@shop.example", ("alice@example.com",), queue_id="4AB12D")
    msg = parse(raw)
    with app.extensions["stronghold_store"].session() as s:
        messagelog.record(s, env, msg, decide(env, msg, Findings(lists=ListIndex([])), Policy()), None)
        item = quarantine.hold(s, raw, recipients=["alice@example.com"], sender=env.sender, subject="receipt",
                               queue_id=env.queue_id, score=0.99, category="spam", reason="spam", trace="t",
                               virus=None)[0]
    auth.login("alice")
    auth.post(f"/junk/{item}/notspam", {}, "/junk/")
    page = client.get("/junk/").get_data(as_text=True)
    assert "its content was not kept in the message log" in page and "Marked as not spam" not in page
    with app.extensions["stronghold_store"].session() as s:
        assert messagelog.pending(s) == []
    assert len(sink.wait_for(lambda m: True)) == 1
