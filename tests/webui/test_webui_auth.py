"""The web UI's side of authenticated allow entries: the per-entry trust flag and what a message proved."""

from __future__ import annotations

import html

from flask import Flask
from flask.testing import FlaskClient

from stronghold.authres import AuthResults
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import entries, messagelog
from stronghold.verdict import Envelope
from tests.webui.conftest import Auth

WARNING = "trusted without authentication: anyone can forge this sender"


def _entry(app: Flask, owner: str, pattern: str) -> entries.ListEntry:
    with app.extensions["stronghold_store"].session() as s:
        return next(e for e in entries.entries(s, owner) if e.pattern == pattern)


def test_trust_flag_is_set_shown_with_a_warning_and_owned(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("alice")
    page = "/lists/alice@example.com"
    text = client.get(page).get_data(as_text=True)
    assert "must be vouched for by a DKIM signature or SPF" in html.unescape(text)  # the rule, explained
    auth.post(page + "/add", {"kind": "allow", "pattern": "old@legacy.example", "trust_unauthenticated": "1"}, page)
    auth.post(page + "/add", {"kind": "allow", "pattern": "boss@trusted.example"}, page)
    assert _entry(app, "alice@example.com", "old@legacy.example").trust_unauthenticated
    plain = _entry(app, "alice@example.com", "boss@trusted.example")
    assert not plain.trust_unauthenticated
    assert html.unescape(client.get(page).get_data(as_text=True)).count(WARNING) == 1
    assert auth.post(f"{page}/trust/{plain.id}", {"trust": "1"}, page).status_code == 302
    assert _entry(app, "alice@example.com", "boss@trusted.example").trust_unauthenticated
    assert html.unescape(client.get(page).get_data(as_text=True)).count(WARNING) == 2
    assert auth.post(f"{page}/trust/{plain.id}", {"trust": "0"}, page).status_code == 302
    assert not _entry(app, "alice@example.com", "boss@trusted.example").trust_unauthenticated
    # someone else's entry, and block entries, cannot be flagged
    with app.extensions["stronghold_store"].session() as s:
        bobs = entries.add_entry(s, "bob@example.com", "allow", "mom@family.example")
        block = entries.add_entry(s, "alice@example.com", "block", "@junk.example")
    assert auth.post(f"{page}/trust/{bobs.id}", {"trust": "1"}, page).status_code == 404
    assert auth.post(f"/lists/bob@example.com/trust/{bobs.id}", {"trust": "1"}, page).status_code == 404
    assert auth.post(f"{page}/trust/{block.id}", {"trust": "1"}, page).status_code == 404
    assert not _entry(app, "bob@example.com", "mom@family.example").trust_unauthenticated


def test_message_detail_shows_what_was_authenticated(client: FlaskClient, auth: Auth, app: Flask) -> None:
    msg = parse(b"From: boss@trusted.example\r\nSubject: figures\r\n\r\nbody")
    env = Envelope("bounce@fail.example", ("alice@example.com",), "192.0.2.1", queue_id="Q1")
    checked = AuthResults("checked", spf="fail", spf_domain="fail.example", dkim=(("trusted.example", "pass"),),
                          from_domain="trusted.example")
    ids = []
    for found in (Findings(lists=ListIndex([]), auth=checked), Findings(lists=ListIndex([]))):
        verdict = decide(env, msg, found, Policy())
        with app.extensions["stronghold_store"].session() as s:
            ids.append(messagelog.record(s, env, msg, verdict, None))
    auth.login("alice")
    page = html.unescape(client.get(f"/messages/{ids[0]}").get_data(as_text=True))
    assert "spf=fail(fail.example) dkim=pass(trusted.example) (checked)" in page
    assert "not checked (no allow entry could apply)" in \
        html.unescape(client.get(f"/messages/{ids[1]}").get_data(as_text=True))
