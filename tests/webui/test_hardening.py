"""The web UI against an attacker (issue 13, findings 1-6): redirects, sessions, throttling,
address hand-over, login names, international domains."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold import digest
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import accounts, entries, messagelog, quarantine
from stronghold.store.errors import EntryError
from stronghold.store.tables import RateLimit
from stronghold.verdict import Envelope
from tests.webui.conftest import PASSWORD, Auth, token
from webui import create_app
from webui.ratelimit import SqlStorage

COOKIE = "stronghold_session"


def _node(app: Flask, **settings: object) -> Flask:
    """Another web node on the same store and secret key."""
    cfg = app.extensions["stronghold_config"]
    return create_app({"data_dir": cfg.data_dir, "database_url": cfg.db_url, "TESTING": True, **settings})


@pytest.fixture
def node2(app: Flask) -> Iterator[Flask]:
    other = _node(app)
    yield other
    other.extensions["stronghold_store"].dispose()


def _client(app: Flask, ip: str = "127.0.0.1", **headers: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base.update({"REMOTE_ADDR": ip, **{f"HTTP_{k.upper()}": v for k, v in headers.items()}})
    return client


def _copy_cookie(src: FlaskClient, dst: FlaskClient) -> None:
    cookie = src.get_cookie(COOKIE)
    assert cookie is not None
    dst.set_cookie(COOKIE, cookie.value)


def _log(app: Flask, rcpt: str, subject: str) -> int:
    msg = parse(f"From: x@sender.example\r\nSubject: {subject}\r\n\r\nbody".encode())
    env = Envelope("x@sender.example", (rcpt,), queue_id="Q1")
    verdict = decide(env, msg, Findings(lists=ListIndex([])), Policy())
    with app.extensions["stronghold_store"].session() as s:
        return messagelog.record(s, env, msg, verdict, None)


# 1. open redirect ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/%09/evil.example/", "/%0a/evil.example/", "/%0d%0a/evil.example/",
                                    "//evil.example/", "/%2f/evil.example/", "/\\evil.example/",
                                    "https://evil.example/", "/%20/evil.example", "http:/evil.example"])
def test_login_never_redirects_off_site(client: FlaskClient, target: str) -> None:
    r = client.post(f"/login?next={target}", data={"login": "alice", "password": PASSWORD,
                                                   "csrf_token": token(client, "/login")})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_login_keeps_a_local_next(client: FlaskClient) -> None:
    r = client.post("/login?next=/lists/alice@example.com%3Fq%3Dx", data={
        "login": "alice", "password": PASSWORD, "csrf_token": token(client, "/login")})
    assert r.headers["Location"] == "/lists/alice@example.com?q=x"


# 2. server-side, revocable sessions ------------------------------------------------------------

def test_a_copied_cookie_dies_with_logout_on_every_node(app: Flask, node2: Flask) -> None:
    alice = app.test_client()
    Auth(alice).login()
    thief, elsewhere = app.test_client(), node2.test_client()
    _copy_cookie(alice, thief)
    _copy_cookie(alice, elsewhere)
    assert thief.get("/lists/alice@example.com").status_code == 200
    assert elsewhere.get("/lists/alice@example.com").status_code == 200  # the session is the store's
    Auth(alice).post("/logout", {})
    assert thief.get("/lists/alice@example.com").status_code == 302
    assert elsewhere.get("/lists/alice@example.com").status_code == 302


@pytest.mark.parametrize("action", ["disable", "logout-all", "password"])
def test_admin_actions_end_sessions_on_every_node(app: Flask, node2: Flask, action: str) -> None:
    bob_id = app.config["user_ids"]["bob"]
    root, bob = app.test_client(), node2.test_client()
    Auth(root).login("root")
    Auth(bob).login("bob")
    assert bob.get("/lists/bob@example.com").status_code == 200
    data = {"password": "another password!"} if action == "password" else {}
    assert Auth(root).post(f"/admin/users/{bob_id}", {"action": action, **data}, "/admin/users").status_code == 302
    assert bob.get("/lists/bob@example.com").status_code == 302
    if action == "disable":
        Auth(root).post(f"/admin/users/{bob_id}", {"action": "enable"}, "/admin/users")
        assert bob.get("/lists/bob@example.com").status_code == 302  # re-enabling revives nothing
    with app.extensions["stronghold_store"].session() as s:
        assert accounts.end_sessions(s, bob_id) == 0  # no record left behind


def test_own_password_change_ends_other_sessions_and_renews_this_one(app: Flask, node2: Flask) -> None:
    here, there = app.test_client(), node2.test_client()
    Auth(here).login()
    Auth(there).login()
    before = here.get_cookie(COOKIE).value
    r = Auth(here).post("/password", {"current": PASSWORD, "new": "another good one", "confirm": "another good one"},
                        "/password")
    assert r.status_code == 302
    assert here.get("/lists/alice@example.com").status_code == 200
    assert here.get_cookie(COOKIE).value != before
    assert there.get("/lists/alice@example.com").status_code == 302
    replay = app.test_client()
    replay.set_cookie(COOKIE, before)
    assert replay.get("/lists/alice@example.com").status_code == 302


def test_a_user_logs_out_everywhere_else(app: Flask, node2: Flask) -> None:
    here, there = app.test_client(), node2.test_client()
    Auth(here).login()
    Auth(there).login()
    r = Auth(here).post("/logout-everywhere", {}, "/password")
    assert r.status_code == 302
    assert "1 other session ended" in here.get("/password").get_data(as_text=True)
    assert there.get("/lists/alice@example.com").status_code == 302
    assert here.get("/lists/alice@example.com").status_code == 200


# 3. throttling ---------------------------------------------------------------------------------

def _try(app: Flask, login: str, password: str, ip: str = "127.0.0.1", **headers: str) -> int:
    client = _client(app, ip, **headers)
    return client.post("/login", data={"login": login, "password": password,
                                       "csrf_token": token(client, "/login")}).status_code


def test_guessing_slows_the_guesser_not_the_owner(app: Flask) -> None:
    for _ in range(5):
        assert _try(app, "alice", "wrong password!", "198.51.100.7") == 401
    assert _try(app, "alice", PASSWORD, "198.51.100.7") == 429  # the guesser waits, even when right
    assert _try(app, "alice", PASSWORD, "203.0.113.9") == 302  # the owner, elsewhere, does not


def test_a_guesser_cannot_rotate_through_its_own_ipv6_network(app: Flask) -> None:
    """One host holds a whole /64 (2^64 addresses): a fresh address per guess must not give a fresh
    budget.  IPv6 clients count per /64, IPv4-mapped ones as the IPv4 address they are."""
    for n in range(5):
        assert _try(app, "alice", "wrong password!", f"2001:db8:1:2::{n + 1:x}") == 401
    assert _try(app, "alice", PASSWORD, "2001:db8:1:2:ffff:1:2:3") == 429
    assert _try(app, "alice", PASSWORD, "2001:db8:1:3::1") == 302  # the next /64 is someone else
    for _ in range(5):
        assert _try(app, "bob", "wrong password!", "198.51.100.30") == 401
    assert _try(app, "bob", PASSWORD, "::ffff:198.51.100.30") == 429


def test_unknown_names_do_not_block_a_real_user_on_the_same_address(app: Flask) -> None:
    for n in range(5):
        assert _try(app, f"nobody{n}", "wrong password!", "192.0.2.1") == 401
    assert _try(app, "alice", PASSWORD, "192.0.2.1") == 302


def test_counts_are_shared_by_web_nodes(app: Flask, node2: Flask) -> None:
    for i in range(5):
        assert _try(app if i % 2 else node2, "bob", "wrong password!", "198.51.100.8") == 401
    assert _try(node2, "bob", PASSWORD, "198.51.100.8") == 429
    assert _try(app, "bob", PASSWORD, "198.51.100.8") == 429


def test_forwarded_for_is_believed_only_from_trusted_proxies(app: Flask) -> None:
    for n in range(5):  # no proxy trusted: a made-up X-Forwarded-For changes nothing
        _try(app, "alice", "wrong password!", "10.0.0.5", x_forwarded_for=f"192.0.2.{n}")
    assert _try(app, "alice", PASSWORD, "10.0.0.5", x_forwarded_for="192.0.2.200") == 429
    proxied = _node(app, web_trusted_proxies=1)
    try:
        for _ in range(5):
            _try(proxied, "bob", "wrong password!", "10.0.0.6", x_forwarded_for="198.51.100.20")
        assert _try(proxied, "bob", PASSWORD, "10.0.0.6", x_forwarded_for="198.51.100.20") == 429
        assert _try(proxied, "bob", PASSWORD, "10.0.0.6", x_forwarded_for="198.51.100.21") == 302
    finally:
        proxied.extensions["stronghold_store"].dispose()


def test_counters_expire_and_are_purged(app: Flask) -> None:
    db = app.extensions["stronghold_store"]
    storage = SqlStorage("stronghold+sql://", store=db)
    assert storage.incr("k1", 60) == 1 and storage.incr("k1", 60) == 2 and storage.get("k1") == 2
    with db.session() as s:
        s.get(RateLimit, "k1").expires = time.time() - 1
    assert storage.get("k1") == 0
    assert storage.incr("k2", 60) == 1  # a new counter sweeps the dead ones away
    with db.session() as s:
        assert s.get(RateLimit, "k1") is None


# 4. an address handed to a new owner starts empty -------------------------------------------

def test_deleted_users_lists_and_mail_do_not_pass_to_the_next_owner(app: Flask) -> None:
    db = app.extensions["stronghold_store"]
    with db.session() as s:
        w3 = accounts.add_user(s, "w3", PASSWORD)
        accounts.assign_address(s, w3, "w3@example.com")
        entries.add_entry(s, "w3@example.com", "allow", "friend@pal.example", "private note of w3")
    old = _log(app, "w3@example.com", "secret mail of w3")
    with db.session() as s:
        [held_old] = quarantine.hold(s, b"Subject: held for w3\r\n\r\nx\r\n", recipients=["w3@example.com"],
                                     sender="p@promo.example", subject="held for w3", queue_id="Q3", score=0.99,
                                     category="spam", reason="spam", trace="t", virus=None)
    root = app.test_client()
    Auth(root).login("root")
    r = Auth(root).post(f"/admin/users/{w3.id}", {"action": "delete", "confirm": "1"}, "/admin/users")
    assert r.status_code == 302
    Auth(root).post("/admin/users", {"login": "w4", "password": PASSWORD, "addresses": "w3@example.com"},
                    "/admin/users")
    time.sleep(0.01)  # the new mail must be stamped after the hand-over (float clock)
    new = _log(app, "w3@example.com", "first mail of w4")
    w4 = app.test_client()
    Auth(w4).login("w4")
    assert "private note" not in w4.get("/lists/w3@example.com").get_data(as_text=True)
    listing = w4.get("/messages/").get_data(as_text=True)
    assert "first mail of w4" in listing and "secret mail of w3" not in listing
    assert w4.get(f"/messages/{old}").status_code == 404
    assert w4.get(f"/messages/{new}").status_code == 200
    with db.session() as s:  # held mail too: neither the Junk page nor the digest shows w3's
        [held_new] = quarantine.hold(s, b"Subject: held for w4\r\n\r\nx\r\n", recipients=["w3@example.com"],
                                     sender="p@promo.example", subject="held for w4", queue_id="Q4", score=0.99,
                                     category="spam", reason="spam", trace="t", virus=None)
    junk = w4.get("/junk/").get_data(as_text=True)
    assert "held for w4" in junk and "held for w3" not in junk
    assert w4.get(f"/junk/{held_old}").status_code == 404 and w4.get(f"/junk/{held_new}").status_code == 200
    with db.session() as s:
        accounts.get_user(s, "w4").digest = "daily"
    [report] = digest.run(app.extensions["stronghold_config"], db, dry_run=True, only="w4")
    assert (report.items, report.outcome) == (1, "dry run")  # w4's own, not w3's
    with db.session() as s:
        assert entries.entries(s, "w3@example.com") == []  # the milter no longer applies them either


def test_a_released_address_drops_its_lists(app: Flask) -> None:
    db = app.extensions["stronghold_store"]
    with db.session() as s:
        entries.add_entry(s, "bob@example.com", "block", "@pest.example", "bob's")
        bob = accounts.get_user(s, "bob")
        accounts.release_address(s, bob, "bob@example.com")
        alice = accounts.get_user(s, "alice")
        accounts.assign_address(s, alice, "bob@example.com")
    with db.session() as s:
        assert entries.entries(s, "bob@example.com") == []


# 5. login names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["w5\u202enimda", "w5\u200badmin", "w5\x00", "w5\tadmin", "w5\u2066x"])
def test_login_names_refuse_control_and_bidi_characters(app: Flask, name: str) -> None:
    with app.extensions["stronghold_store"].session() as s, pytest.raises(EntryError, match="invisible"):
        accounts.add_user(s, name, PASSWORD)
    root = app.test_client()
    Auth(root).login("root")
    r = Auth(root).post("/admin/users", {"login": name, "password": PASSWORD, "addresses": ""}, "/admin/users")
    assert r.status_code == 400 and "invisible" in r.get_data(as_text=True)


def test_login_names_may_be_international(app: Flask) -> None:
    with app.extensions["stronghold_store"].session() as s:
        assert accounts.add_user(s, "J\u00fcrgen", PASSWORD).login == "j\u00fcrgen"


# 6. international domains --------------------------------------------------------------------

def test_idn_stored_as_a_label_shown_and_found_as_u_label(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    page = "/lists/alice@example.com"
    assert auth.post(page + "/add", {"kind": "block", "pattern": "@faß.de"}, page).status_code == 302
    assert auth.post(page + "/add", {"kind": "block", "pattern": "*.bücher.example"}, page).status_code == 302
    assert set(_patterns(app)) == {"@xn--fa-hia.de", "*.xn--bcher-kva.example"}
    shown = client.get(page).get_data(as_text=True).replace("<wbr>", "")
    assert ">@faß.de</td>" in shown and ">*.bücher.example</td>" in shown
    assert ">*.xn--bcher" not in shown and 'title="*.xn--bcher-kva.example"' in shown  # A-label on hover
    found = client.get(page + "?q=bücher").get_data(as_text=True).replace("<wbr>", "")
    assert ">*.bücher.example</td>" in found and ">@faß.de</td>" not in found
    assert ">@faß.de</td>" in client.get(page + "?q=xn--fa").get_data(as_text=True).replace("<wbr>", "")


def _patterns(app: Flask) -> list[str]:
    with app.extensions["stronghold_store"].session() as s:
        return [e.pattern for e in entries.entries(s, "alice@example.com")]


@pytest.mark.parametrize(("base_url", "asked", "secure"), [
    ("https://mail.example.com", False, True),  # served over TLS: Secure without being asked
    ("https://mail.example.com/stronghold", False, True),
    ("http://127.0.0.1:8080", False, False),  # plain http: a Secure cookie would never come back
    ("http://127.0.0.1:8080", True, True),  # asked for (TLS terminated elsewhere)
])
def test_the_session_cookie_is_secure_wherever_users_come_over_https(
        app: Flask, base_url: str, asked: bool, secure: bool) -> None:
    node = _node(app, web_base_url=base_url, web_secure_cookies=asked)
    try:
        client = node.test_client()
        client.environ_base["wsgi.url_scheme"] = "https"
        cookie = Auth(client).login().headers["Set-Cookie"]
        assert cookie.startswith(COOKIE + "=") and "HttpOnly" in cookie
        assert ("; Secure" in cookie) is secure, cookie
    finally:
        node.extensions["stronghold_store"].dispose()
