"""The Junk page through Flask's test client: who sees what, and every action tried as an attacker would."""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from stronghold import digest
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import accounts, entries, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.store.tables import QuarantineItem
from stronghold.verdict import Envelope
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import Auth, seed, token
from tests.webui.hostile import hostile
from webui import create_app, junk
from webui import digest as webui_digest


@pytest.fixture
def app(releasing_app: Flask) -> Flask:
    """Releases go to the SMTP sink."""
    return releasing_app


def hold(app: Flask, rcpt: str, subject: str = "cheap pills", sender: str = "promo@deals.example",
         virus: str | None = None, queue_id: str = "Q1", raw: bytes | None = None) -> int:
    raw = raw or (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nbuy now\r\n").encode()
    with app.extensions["stronghold_store"].session() as s:
        return quarantine.hold(s, raw, recipients=[rcpt], sender=sender, subject=subject, queue_id=queue_id,
                               score=0.9993, category="virus" if virus else "spam",
                               reason=virus or "score 0.9993 >= 0.99", trace="t", virus=virus)[0]


def item(app: Flask, item_id: int) -> quarantine.Held | None:
    with app.extensions["stronghold_store"].session() as s:
        return quarantine.get(s, item_id)


def flashes(client: FlaskClient, url: str = "/junk/") -> str:
    return client.get(url).get_data(as_text=True)


def test_junk_needs_login(client: FlaskClient, app: Flask) -> None:
    mine = hold(app, "alice@example.com")
    assert client.get("/junk/").status_code == 302
    assert client.get(f"/junk/{mine}").status_code == 302


def test_user_sees_own_addresses_but_no_viruses_admin_sees_all(client: FlaskClient, auth: Auth,
                                                               app: Flask) -> None:
    hold(app, "alice@example.com", "for alice one")
    hold(app, "alice2@example.com", "for alice two")
    hold(app, "bob@example.com", "for bob")
    virus = hold(app, "alice@example.com", "invoice attached", virus="Eicar-Test-Signature")
    auth.login("alice")
    page = flashes(client)
    assert "for alice one" in page and "for alice two" in page
    assert "for bob" not in page and "invoice attached" not in page and "Eicar" not in page
    assert client.get(f"/junk/{virus}").status_code == 404  # her own address, but a virus
    auth.post("/logout", {}, "/junk/")
    auth.login("root")
    page = flashes(client)
    for subject in ("for alice one", "for alice two", "for bob", "invoice attached", "Eicar-Test-Signature"):
        assert subject in page
    assert client.get(f"/junk/{virus}").status_code == 200


def test_other_users_items_are_404_by_every_url_and_form(client: FlaskClient, auth: Auth, app: Flask,
                                                         sink: SmtpSink) -> None:
    bobs = hold(app, "bob@example.com", "for bob", sender="friend@pal.example")
    with app.extensions["stronghold_store"].session() as s:
        messagelog.record(s, Envelope("friend@pal.example", ("bob@example.com",), queue_id="Q1"),
                          parse(b"Subject: for bob\r\n\r\nx"), decide(
                              Envelope("friend@pal.example", ("bob@example.com",), queue_id="Q1"),
                              parse(b"Subject: for bob\r\n\r\nx"), Findings(lists=ListIndex([])), Policy()))
    guessed = bobs + 1000
    auth.login("alice")
    notes = set()
    for target in (bobs, guessed):
        assert client.get(f"/junk/{target}").status_code == 404
        for action in ("release", "allow", "notspam", "delete"):  # the note a message deleted meanwhile gets
            r = auth.post(f"/junk/{target}/{action}", {"back": "item"}, "/junk/")
            assert r.status_code == 302 and r.headers["Location"].endswith("/junk/")
            notes.add(re.sub(r'name="csrf_token" value="[^"]+"', "", flashes(client)))
    assert len(notes) == 1 and junk.NOT_ACTIONABLE in notes.pop()  # bob's and no one's: the same page
    found = client.get("/junk/?q=for+bob").get_data(as_text=True)
    assert f'id="item-{bobs}"' not in found and "Nothing held matches" in found
    held = item(app, bobs)
    assert held is not None and held.released is None  # still there, never released
    assert sink.messages == []
    with app.extensions["stronghold_store"].session() as s:
        assert entries.entries(s, "bob@example.com") == []
        assert messagelog.pending(s) == []


def test_forms_need_a_token_of_the_same_session(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mine = hold(app, "alice@example.com")
    other = app.test_client()
    Auth(other).login("bob")
    bobs_token = token(other, "/junk/")
    auth.login("alice")
    assert client.post(f"/junk/{mine}/delete", data={}).status_code == 400
    assert client.post(f"/junk/{mine}/release", data={"csrf_token": bobs_token}).status_code == 400
    assert client.post(f"/junk/{mine}/delete", data={"csrf_token": "forged"}).status_code == 400
    assert item(app, mine) is not None and item(app, mine).released is None  # type: ignore[union-attr]


def test_release_once_to_that_recipient_only(client: FlaskClient, auth: Auth, app: Flask,
                                             sink: SmtpSink) -> None:
    mine = hold(app, "alice@example.com", "newsletter", sender="news@shop.example")
    auth.login("alice")
    r = auth.post(f"/junk/{mine}/release", {}, "/junk/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/junk/")
    page = flashes(client)
    assert "Released" in page and "on its way to alice@example.com" in page
    got = sink.wait_for(lambda m: True)
    assert [(m.sender, m.recipients) for m in got] == [("news@shop.example", ["alice@example.com"])]
    assert b"Subject: newsletter" in got[0].data
    held = item(app, mine)
    assert held is not None and held.released is not None and held.released_by == "alice"
    auth.post(f"/junk/{mine}/release", {"back": "item"}, "/junk/")
    assert "Already released" in flashes(client, f"/junk/{mine}")
    assert len(sink.messages) == 1  # nothing sent again


def test_release_failure_says_so_and_keeps_the_item(store: Store, tmp_path: Path) -> None:
    dead = SmtpSink()
    dead.close()  # nothing listens on this port any more
    app = create_app({"data_dir": tmp_path / "data", "database_url": store.url, "TESTING": True,
                      "release_smtp": f"127.0.0.1:{dead.port}"})
    seed(store)
    client = app.test_client()
    auth = Auth(client)
    mine = hold(app, "alice@example.com")
    auth.login("alice")
    auth.post(f"/junk/{mine}/release", {}, "/junk/")
    assert "Not released: the mail system refused the release" in flashes(client)
    held = item(app, mine)
    assert held is not None and held.released is None  # can be tried again
    app.extensions["stronghold_store"].dispose()


def test_release_and_always_allow(client: FlaskClient, auth: Auth, app: Flask, sink: SmtpSink) -> None:
    mine = hold(app, "alice2@example.com", sender="Friend@Pal.example")
    auth.login("alice")
    auth.post(f"/junk/{mine}/allow", {}, "/junk/")
    assert "friend@pal.example (the From address) is now on the allow list of alice2@example.com" in flashes(client)
    with app.extensions["stronghold_store"].session() as s:
        assert [(e.kind, e.pattern) for e in entries.entries(s, "alice2@example.com")] == [
            ("allow", "friend@pal.example")]
        assert entries.entries(s, "alice@example.com") == []
    assert len(sink.wait_for(lambda m: m.recipients == ["alice2@example.com"])) == 1


def test_not_spam_releases_and_records_feedback(client: FlaskClient, auth: Auth, app: Flask,
                                                sink: SmtpSink) -> None:
    env = Envelope("news@shop.example", ("alice@example.com", "bob@example.com"), queue_id="4AB12C")
    msg = parse(b"From: news@shop.example\r\nSubject: receipt\r\n\r\nthanks")
    with app.extensions["stronghold_store"].session() as s:
        mid = messagelog.record(s, env, msg, decide(env, msg, Findings(lists=ListIndex([])), Policy()), {"tok"})
    mine = hold(app, "alice@example.com", "receipt", sender="news@shop.example", queue_id="4AB12C")
    auth.login("alice")
    auth.post(f"/junk/{mine}/notspam", {"back": "item"}, "/junk/")
    assert "Marked as not spam" in flashes(client, f"/junk/{mine}")
    with app.extensions["stronghold_store"].session() as s:
        assert [(fb.message_id, fb.is_spam, fb.user_id) for fb, _ in messagelog.pending(s)] == [
            (mid, False, app.config["user_ids"]["alice"])]
    assert len(sink.wait_for(lambda m: True)) == 1
    # the log entry links back to the held copy
    assert f'href="/junk/{mine}"' in client.get(f"/messages/{mid}").get_data(as_text=True)


def test_delete(client: FlaskClient, auth: Auth, app: Flask, sink: SmtpSink) -> None:
    mine = hold(app, "alice@example.com", "to be deleted")
    auth.login("alice")
    asked = auth.post(f"/junk/{mine}/delete", {}, "/junk/").get_data(as_text=True)
    assert "Delete “to be deleted”?" in asked and 'name="confirm" value="1"' in asked
    assert item(app, mine) is not None  # only asked so far
    auth.post(f"/junk/{mine}/delete", {"confirm": "1"}, "/junk/")
    assert item(app, mine) is None
    page = flashes(client)
    assert "Deleted “to be deleted”" in page and f"/junk/{mine}" not in page
    assert client.get(f"/junk/{mine}").status_code == 404
    assert auth.post(f"/junk/{mine}/release", {}, "/junk/").status_code == 302  # a stale tab's form
    assert junk.NOT_ACTIONABLE in flashes(client)
    assert sink.messages == []


def test_search_by_text_and_dates_and_pages(client: FlaskClient, auth: Auth, app: Flask) -> None:
    old = hold(app, "alice@example.com", "autumn sale", sender="sales@shop.example")
    hold(app, "alice@example.com", "winter sale", sender="promo@other.example")
    with app.extensions["stronghold_store"].session() as s:
        s.execute(update(QuarantineItem).where(QuarantineItem.id == old)
                  .values(ts=calendar.timegm((2026, 10, 15, 12, 0, 0, 0, 0, 0))))
    auth.login("alice")
    by_sender = client.get("/junk/?q=SHOP.example").get_data(as_text=True)
    assert "autumn sale" in by_sender and "winter sale" not in by_sender
    by_subject = client.get("/junk/?q=winter").get_data(as_text=True)
    assert "winter sale" in by_subject and "autumn sale" not in by_subject
    october = client.get("/junk/?since=2026-10-01&until=2026-10-15").get_data(as_text=True)
    assert "autumn sale" in october and "winter sale" not in october
    after = client.get("/junk/?since=2026-10-16").get_data(as_text=True)
    assert "winter sale" in after and "autumn sale" not in after
    bad = client.get("/junk/?since=yesterday").get_data(as_text=True)
    assert "must look like" in bad and "winter sale" in bad
    for i in range(50):
        hold(app, "alice2@example.com", f"bulk {i:02d}")
    first = client.get("/junk/").get_data(as_text=True)
    assert "bulk 49" in first and "autumn sale" not in first and 'rel="next"' in first
    assert "<title>Junk · Mail Stronghold</title>" in first and first.count('id="h-digest"') == 1
    second = client.get("/junk/?page=1").get_data(as_text=True)
    assert "autumn sale" in second and "bulk 49" not in second and 'rel="next"' not in second


def test_preview_is_text_only_with_a_strict_policy(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mine = hold(app, "alice@example.com", "hostile", raw=hostile())
    auth.login("alice")
    r = client.get(f"/junk/{mine}")
    page = r.get_data(as_text=True)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'none'" in csp and "img-src 'none'" in csp and "default-src 'none'" in csp
    assert "<script" not in page.lower().replace("&lt;script", "") and "onerror" not in page
    assert "<img" not in page and "<style" not in page and "javascript:" not in page
    assert "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in page  # the encoded-word subject, inert
    assert "Dear customer" in page and "verify your account" in page
    assert "\u202e" not in page  # the direction override in the From's name is not obeyed: the name is not
    # shown (lists.shown_from): the encoded name "PayPal Security <service@paypal.com>" is a name, and the
    # page names the real sender and says the name looks like another address
    assert "evil@bad.example" in page and "looks like another address: it is not the sender" in page
    assert "http://phish.example/login" in page  # link targets as text
    assert 'href="http://phish.example' not in page


def test_admin_releases_a_virus_users_cannot(client: FlaskClient, auth: Auth, app: Flask,
                                             sink: SmtpSink) -> None:
    virus = hold(app, "alice@example.com", "invoice", virus="Eicar-Test-Signature")
    auth.login("alice")
    assert auth.post(f"/junk/{virus}/release", {}, "/junk/").status_code == 302
    assert junk.NOT_ACTIONABLE in flashes(client)  # as for any item not hers to act on
    assert sink.messages == []
    auth.post("/logout", {}, "/junk/")
    auth.login("root")
    page = client.get(f"/junk/{virus}").get_data(as_text=True)
    assert "carries a virus" in page and "Not spam" not in page
    asked = auth.post(f"/junk/{virus}/release", {}, "/junk/").get_data(as_text=True)
    assert "Release a message carrying Eicar-Test-Signature?" in asked and 'name="confirm" value="1"' in asked
    assert sink.messages == [] and item(app, virus).released is None  # type: ignore[union-attr]
    auth.post(f"/junk/{virus}/release", {"confirm": "1"}, "/junk/")
    assert [m.recipients for m in sink.wait_for(lambda m: True)] == [["alice@example.com"]]
    held = item(app, virus)
    assert held is not None and held.released_by == "root"



def _link(app: Flask, item_id: int, rcpt: str, age_days: float = 0) -> str:
    cfg = app.extensions["stronghold_config"]
    return "/digest/release/" + digest.make_link_token(cfg, item_id, rcpt, now=time.time() - age_days * 86400)


def _csrf(client: FlaskClient, url: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).get_data(as_text=True))
    assert found, url
    return found.group(1)


def test_digest_link_get_confirms_post_releases_once(client: FlaskClient, app: Flask, sink: SmtpSink) -> None:
    mine = hold(app, "alice@example.com", "weekly receipt", sender="shop@store.example")
    link = _link(app, mine, "alice@example.com")
    for _ in range(2):  # a link scanner's prefetch, then the user: neither releases anything
        page = client.get(link)
        assert page.status_code == 200 and "Release this message?" in page.get_data(as_text=True)
        assert page.headers["Referrer-Policy"] == "no-referrer"
    held = item(app, mine)
    assert held is not None and held.released is None and sink.messages == []
    assert client.post(link, data={}).status_code == 400  # a form without its token
    done = client.post(link, data={"csrf_token": _csrf(client, link)})
    assert done.status_code == 200 and "on its way to" in done.get_data(as_text=True)
    assert [m.recipients for m in sink.wait_for(lambda m: True)] == [["alice@example.com"]]
    again = client.post(link, data={"csrf_token": _csrf(client, "/login")})
    assert again.status_code == 409 and "already released" in again.get_data(as_text=True)
    assert client.get(link).status_code == 409
    assert len(sink.messages) == 1


def test_digest_stale_forged_and_virus_links_change_nothing(client: FlaskClient, app: Flask,
                                                            sink: SmtpSink) -> None:
    mine = hold(app, "alice@example.com")
    virus = hold(app, "alice@example.com", "invoice", virus="Eicar-Test-Signature")
    good = _link(app, mine, "alice@example.com")
    head, _, tail = good.rpartition(".")
    forged = head + "." + ("A" if tail[0] != "A" else "B") + tail[1:]  # one byte of the signature changed
    other = _link(app, mine, "bob@example.com")  # a genuine signature naming the wrong recipient
    cases = ((_link(app, mine, "alice@example.com", age_days=30), 410, "expired"),
             (forged, 400, "not valid"), (other, 404, "no longer in the quarantine"),
             (_link(app, virus, "alice@example.com"), 403, "virus"))
    csrf = _csrf(client, "/login")
    for url, status, words in cases:
        for response in (client.get(url), client.post(url, data={"csrf_token": csrf})):
            assert response.status_code == status and words in response.get_data(as_text=True), url
            assert "Nothing was changed" in response.get_data(as_text=True)
    assert item(app, mine).released is None and item(app, virus).released is None  # type: ignore[union-attr]
    assert sink.messages == []


def test_digest_links_are_rate_limited_per_client(client: FlaskClient, app: Flask) -> None:
    mine = hold(app, "alice@example.com")
    for i in range(webui_digest.BAD_LINKS_PER_WINDOW):
        assert client.get(f"/digest/release/guess{i}").status_code == 400
    blocked = client.get(_link(app, mine, "alice@example.com"))  # even a good one waits now
    assert blocked.status_code == 429 and "Too many invalid" in blocked.get_data(as_text=True)


def test_digest_choice(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("alice")
    assert auth.post("/junk/digest", {"digest": "hourly"}, "/junk/").status_code == 400
    auth.post("/junk/digest", {"digest": "weekly"}, "/junk/")
    page = flashes(client)
    assert "weekly digest" in page and '<option value="weekly" selected>' in page
    with app.extensions["stronghold_store"].session() as s:
        assert accounts.get_user(s, "alice").digest == "weekly"  # type: ignore[union-attr]
        assert accounts.get_user(s, "bob").digest == "daily"  # type: ignore[union-attr]


def test_admin_retries_an_unconfirmed_release(client: FlaskClient, auth: Auth, app: Flask,
                                              sink: SmtpSink) -> None:
    mine = hold(app, "alice@example.com", "lost in transit")
    with app.extensions["stronghold_store"].session() as s:  # claimed long ago, never confirmed
        s.execute(update(QuarantineItem).where(QuarantineItem.id == mine)
                  .values(released=time.time() - 3600, released_by="alice"))
    auth.login("alice")
    assert "Send the release again" not in client.get(f"/junk/{mine}").get_data(as_text=True)
    assert auth.post(f"/junk/{mine}/retry", {}, "/junk/").status_code == 404
    auth.post("/logout", {}, "/junk/")
    auth.login("root")
    assert "never confirmed" in client.get(f"/junk/{mine}").get_data(as_text=True)
    auth.post(f"/junk/{mine}/retry", {}, "/junk/")
    assert [m.recipients for m in sink.wait_for(lambda m: True)] == [["alice@example.com"]]
    held = item(app, mine)
    assert held is not None and held.delivered is not None and held.released_by == "root"
    assert auth.post(f"/junk/{mine}/retry", {}, "/junk/").status_code == 404  # confirmed now: nothing to retry
    assert len(sink.messages) == 1
