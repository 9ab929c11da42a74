"""The web UI keeps what the user gave and says what it did (issue 13, findings 7-11 and 13)."""

from __future__ import annotations

import io
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from stronghold.findings import Findings
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import entries, messagelog
from stronghold.verdict import Category, Envelope
from tests.webui.conftest import Auth, token

MiB = 1024 * 1024
PAGE = "/lists/alice@example.com"


def _import(client: FlaskClient, data: bytes, page: str = PAGE):
    """Encoded in memory: the test client's own encoder leaves a temporary file open for big bodies."""
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), "lists.csv"),
                                       "csrf_token": token(client, page)})
    return client.post(page + "/import", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def _patterns(app: Flask, owner: str = "alice@example.com") -> set[str]:
    with app.extensions["stronghold_store"].session() as s:
        return {e.pattern for e in entries.entries(s, owner)}


def _log(app: Flask, header_from: str, sender: str, subject: str = "news", category_allowed: bool = False,
         ts: float | None = None) -> int:
    msg = parse(f"From: {header_from}\r\nSubject: {subject}\r\n\r\nbody".encode())
    env = Envelope(sender, ("alice@example.com",), queue_id="Q2")
    index = ListIndex([ListEntry(1, "alice@example.com", "allow", "@trusted.example", trust_unauthenticated=True)]
                      if category_allowed else [])
    verdict = decide(env, msg, Findings(lists=index), Policy())
    with app.extensions["stronghold_store"].session() as s:
        return messagelog.record(s, env, msg, verdict, None, ts=ts)


# 7-9. CSV import --------------------------------------------------------------------------------

def test_a_file_over_one_mib_is_imported_whole(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    head = b"\n" * (MiB - 20)  # the old 1 MiB cut fell inside the next line
    r = _import(client, head + "allow,boss@company.example.org,chef é\n".encode() + b"block,@after.example,\n")
    assert r.status_code == 302
    assert _patterns(app) == {"boss@company.example.org", "@after.example"}


def test_a_utf8_character_across_one_mib_is_fine(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    line = "block,@x.example,é\n".encode()
    pad = b"\n" * (MiB - line.index("é".encode()) - 1)  # é's two bytes straddle the old cut
    assert _import(client, pad + line).status_code == 302
    assert _patterns(app) == {"@x.example"}


def test_too_large_files_get_a_styled_413_and_nothing_is_imported(client: FlaskClient, auth: Auth,
                                                                  app: Flask) -> None:
    auth.login()
    r = _import(client, b"block,@big.example,\n" + b"\n" * (5 * MiB))
    assert r.status_code == 413
    page = r.get_data(as_text=True)
    assert "Too large" in page and "/static/style.css" in page and "Split the file" in page
    assert _patterns(app) == set()


def test_an_oversized_field_is_reported_not_a_crash(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    r = _import(client, b"block,@ok.example,\nblock,\"" + b"x" * (200 * 1024) + b"\",\n")
    assert r.status_code == 400 and "line 2: unreadable CSV" in r.get_data(as_text=True)
    assert _patterns(app) == set()


def test_many_bad_lines_are_all_reported_and_nothing_half_done(client: FlaskClient, auth: Auth,
                                                              app: Flask) -> None:
    auth.login()
    data = b"block,@first.example,\n" + b"".join(b"block,bad %d,\n" % n for n in range(300)) \
        + b"allow,good@late.example,\n"
    r = _import(client, data)
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and "Nothing was imported: 300 lines" in page
    assert "line 2:" in page and "line 301:" in page
    assert _patterns(app) == set()


# 10. the list buttons act on what the user sees ------------------------------------------------

def test_block_sender_uses_the_from_address_and_says_so(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mid = _log(app, "Weekly News <news@brand.example>", "bounce-123@mailer.example")
    auth.login()
    r = auth.post(f"/messages/{mid}/list", {"kind": "block", "target": "address"}, "/messages/")
    assert r.status_code == 302
    assert _patterns(app) == {"news@brand.example"}
    assert "news@brand.example (the From address) is now on the block list" in \
        client.get("/messages/").get_data(as_text=True)
    other = _log(app, "Offers <offers@shop.example>", "bounce-9@mailer.example")
    auth.post(f"/messages/{other}/list", {"kind": "allow", "target": "domain"}, "/messages/")
    assert _patterns(app) == {"news@brand.example", "@shop.example"}


def test_a_blocked_sender_is_shown_as_blocked_not_offered_again(client: FlaskClient, auth: Auth,
                                                                app: Flask) -> None:
    _log(app, "News <news@brand.example>", "bounce@mailer.example", "first issue")
    with app.extensions["stronghold_store"].session() as s:
        entries.add_entry(s, "alice@example.com", "block", "@brand.example")
    auth.login()
    page = client.get("/messages/").get_data(as_text=True)
    assert "Blocked: @brand.example" in page and 'aria-label="Block sender' not in page


def test_message_detail_offers_allow_and_block(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mid = _log(app, "News <news@brand.example>", "bounce@mailer.example")
    auth.login()
    page = client.get(f"/messages/{mid}").get_data(as_text=True)
    for label in ("Block news@brand.example", "Block @brand.example", "Always allow news@brand.example",
                  "Always allow @brand.example"):
        assert label in page
    assert "it was sent from bounce@mailer.example" in page


# 11. errors say what is wrong, about what was given ---------------------------------------------

def test_entry_errors_are_clear(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    r = auth.post(PAGE + "/add", {"kind": "block", "pattern": "@x.example", "comment": "c" * 250}, PAGE)
    assert r.status_code == 400 and "the comment has 250 characters; at most 200 fit" in r.get_data(as_text=True)
    r = auth.post(PAGE + "/add", {"kind": "block", "pattern": "a" * 1000}, PAGE)
    assert "the pattern has 1000 characters; at most 320 fit" in r.get_data(as_text=True)
    assert "a" * 100 not in r.get_data(as_text=True).split('value="')[0]  # not echoed in the message
    r = auth.post(PAGE + "/add", {"kind": "block", "pattern": "<script>x</script>@x.com"}, PAGE)
    assert "&#39;&lt;script&gt;x&lt;/script&gt;@x.com&#39;: the part before @ is not valid" in r.get_data(as_text=True)
    assert _patterns(app) == set()


def test_a_conflict_links_to_the_other_entry(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    auth.post(PAGE + "/add", {"kind": "block", "pattern": "@pest.example"}, PAGE)
    r = auth.post(PAGE + "/add", {"kind": "allow", "pattern": "@pest.example"}, PAGE)
    assert r.status_code == 400
    assert 'href="/lists/alice@example.com?q=@pest.example#list-block"' in r.get_data(as_text=True)


# 13. error pages, messages, totals, search ------------------------------------------------------

def test_405_and_500_are_the_sites_pages(client: FlaskClient, auth: Auth, app: Flask,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    r = client.get("/logout")
    assert r.status_code == 405 and "/static/style.css" in r.get_data(as_text=True)
    auth.login()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(messagelog, "daily_counts", broken)
    r = client.get("/")
    page = r.get_data(as_text=True)
    assert r.status_code == 500 and "Something went wrong" in page and "disk on fire" not in page
    assert "/static/style.css" in page


def test_admin_errors_show_as_errors(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("root")
    root = app.config["user_ids"]["root"]
    r = auth.post(f"/admin/users/{root}", {"action": "disable"}, "/admin/users")
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert 'class="flashes flash-error" role="alert"' in page and "cannot disable or delete your own" in page


def test_delete_user_asks_first(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("root")
    bob = app.config["user_ids"]["bob"]
    r = auth.post(f"/admin/users/{bob}", {"action": "delete"}, "/admin/users")
    assert r.status_code == 200 and "Delete user bob?" in r.get_data(as_text=True)
    assert "the allow and block lists of bob@example.com are deleted too" in r.get_data(as_text=True)
    r = auth.post(f"/admin/users/{bob}", {"action": "remove-address", "address": "bob@example.com"}, "/admin/users")
    assert r.status_code == 200 and "Remove bob@example.com from bob?" in r.get_data(as_text=True)
    assert 'id="user-bob"' in client.get("/admin/users").get_data(as_text=True)
    assert 'href="/lists/bob@example.com"' in client.get("/admin/users").get_data(as_text=True)


def test_dashboard_totals_count_every_message(client: FlaskClient, auth: Auth, app: Flask) -> None:
    _log(app, "a@trusted.example", "a@trusted.example", category_allowed=True)
    _log(app, "b@other.example", "b@other.example")
    auth.login()
    page = client.get("/").get_data(as_text=True)
    assert "all: <strong>2</strong>" in page and "allowed</a>: <strong>1</strong>" in page



def test_every_category_the_filter_can_say_is_charted_and_filterable(client: FlaskClient, auth: Auth) -> None:
    """The dashboard and the Recent mail filter take their categories from verdict.Category."""
    auth.login()
    page = client.get("/").get_data(as_text=True)
    listing = client.get("/messages/").get_data(as_text=True)
    for category in Category:
        assert f"{category}</a>: <strong>0</strong>" in page
        assert f'<option value="{category}">' in listing

def test_recent_mail_search_by_sender_subject_and_day(client: FlaskClient, auth: Auth, app: Flask) -> None:
    _log(app, "Anna <anna@friends.example>", "anna@friends.example", "Holiday photos")
    _log(app, "Bank <info@bank.example>", "info@bank.example", "Your statement")
    _log(app, "Old <old@past.example>", "old@past.example", "Last year", ts=time.time() - 10 * 86400)
    auth.login()

    def subjects(query: str) -> list[str]:
        page = client.get("/messages/?" + query).get_data(as_text=True)
        return [s for s in ("Holiday photos", "Your statement", "Last year") if s in page]
    assert subjects("q=friends") == ["Holiday photos"]
    assert subjects("q=STATEMENT") == ["Your statement"]
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 10 * 86400))
    assert subjects(f"day={day}") == ["Last year"]
    assert subjects("day=2026-13-45") == ["Holiday photos", "Your statement", "Last year"]
