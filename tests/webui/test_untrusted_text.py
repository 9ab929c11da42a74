"""Sender-controlled text (subjects, From, file names) cannot hide or reorder characters on any page."""

from __future__ import annotations

import sys
import unicodedata
from email.header import Header

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import messagelog, quarantine
from stronghold.verdict import Envelope
from tests.webui.conftest import Auth
from webui.safetext import KEPT_FORMAT_CHARS, REPLACEMENT, visible

RLO = "\u202e"
SUBJECT = f"Invoice {RLO}fdp.exe"
FROM_NAME = f"Support {RLO}troppuS"


def _spoofed_raw(rcpt: str) -> bytes:
    subject = Header(SUBJECT, "utf-8").encode()
    name = Header(FROM_NAME, "utf-8").encode()
    return (f"From: {name} <rlo@promo.example>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Content-Type: text/plain\r\n\r\nopen the attachment\r\n").encode()


def _log(app: Flask, rcpt: str) -> int:
    raw = _spoofed_raw(rcpt)
    env = Envelope(f"bounce{RLO}@promo.example", (rcpt,), queue_id="QRLO")
    msg = parse(raw)
    verdict = decide(env, msg, Findings(lists=ListIndex([])), Policy())
    with app.extensions["stronghold_store"].session() as s:
        return messagelog.record(s, env, msg, verdict, {"tok"})


def _hold(app: Flask, rcpt: str) -> int:
    with app.extensions["stronghold_store"].session() as s:
        return quarantine.hold(s, _spoofed_raw(rcpt), recipients=[rcpt], sender=f"x{RLO}@promo.example",
                               subject=SUBJECT, queue_id="QRLO", score=0.999, category="spam",
                               reason="score", trace="t", virus=None)[0]


def _assert_neutralised(page: str) -> None:
    assert RLO not in page
    assert f"Invoice {REPLACEMENT}fdp.exe" in page


def test_recent_mail_list_and_message_show_no_direction_override(client: FlaskClient, auth: Auth,
                                                                 app: Flask) -> None:
    message_id = _log(app, "alice@example.com")
    auth.login()
    listing = client.get("/messages/").get_data(as_text=True)
    _assert_neutralised(listing)
    assert f"Support {REPLACEMENT}troppuS" in listing
    detail = client.get(f"/messages/{message_id}").get_data(as_text=True)
    _assert_neutralised(detail)
    assert f"Support {REPLACEMENT}troppuS" in detail and f"bounce{REPLACEMENT}@promo.example" in detail
    auth.login("root")  # the admin's view shows the trace too
    _assert_neutralised(client.get(f"/messages/{message_id}").get_data(as_text=True))
    _assert_neutralised(client.get("/messages/?all=1").get_data(as_text=True))


def test_junk_list_and_item_show_no_direction_override(client: FlaskClient, auth: Auth, app: Flask) -> None:
    item_id = _hold(app, "alice@example.com")
    auth.login()
    listing = client.get("/junk/").get_data(as_text=True)
    _assert_neutralised(listing)
    assert f"x{REPLACEMENT}@promo.example" in listing
    detail = client.get(f"/junk/{item_id}").get_data(as_text=True)
    _assert_neutralised(detail)
    assert f"Support {REPLACEMENT}troppuS" in detail


def test_list_comments_show_no_direction_override(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = "/lists/alice@example.com"
    auth.post(page + "/add", {"kind": "block", "pattern": "@promo.example", "comment": f"from {RLO}gpj.exe"}, page)
    shown = client.get(page).get_data(as_text=True)
    assert RLO not in shown and f"from {REPLACEMENT}gpj.exe" in shown


@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                                  "\u2069", "\u200e", "\u200f", "\u061c", "\u200b", "\u2060", "\ufeff", "\u00ad",
                                  "\u2028", "\u3164", "\x07", "\x1b", "\x85", "\U000e0041"])
def test_hidden_and_reordering_characters_become_visible(char: str) -> None:
    assert visible(f"a{char}b") == f"a{REPLACEMENT}b"


def test_text_people_write_is_kept() -> None:
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want", with its zero-width non-joiner
    for text in ("tab\tand\nnewline", "Grüße, 東京, שלום", persian, "👨\u200d👩\u200d👧 ❤\ufe0f"):
        assert visible(text) == text
    assert visible(None) == ""


def test_every_invisible_format_character_is_replaced() -> None:
    """All of Unicode category Cf in this Python's database, but the few kept on purpose."""
    missed = [f"U+{c:04X}" for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c)) == "Cf" and chr(c) not in KEPT_FORMAT_CHARS
              and visible(chr(c)) != REPLACEMENT]
    assert missed == []
