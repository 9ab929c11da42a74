"""The web UI through Flask's test client: flows, security and ownership (as an attacker would)."""

from __future__ import annotations

import io

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import entries, messagelog
from stronghold.verdict import Envelope
from tests.webui.conftest import PASSWORD, Auth, token


def _entry_ids(app: Flask, owner: str | None) -> dict[str, int]:
    with app.extensions["stronghold_store"].session() as s:
        return {e.pattern: e.id for e in entries.entries(s, owner)}


def _log_message(app: Flask, rcpts: tuple[str, ...], subject: str = "hello",
                 sender: str = "x@sender.example") -> int:
    msg = parse(f"From: {sender}\r\nSubject: {subject}\r\n\r\nbody".encode())
    env = Envelope(sender, rcpts, queue_id="Q1")
    verdict = decide(env, msg, Findings(lists=ListIndex([])), Policy())
    with app.extensions["stronghold_store"].session() as s:
        return messagelog.record(s, env, msg, verdict, {"tok"})


def test_login_required_and_login_logout(client: FlaskClient, auth: Auth) -> None:
    assert client.get("/lists/").status_code == 302
    assert auth.login().status_code == 302
    assert client.get("/lists/").headers["Location"].endswith("/lists/alice2@example.com")  # first, sorted
    auth.post("/logout", {})
    assert client.get("/lists/alice@example.com").status_code == 302


def test_no_user_enumeration(auth: Auth) -> None:
    wrong_password = auth.login("alice", "not the password")
    unknown_user = auth.login("nobody", "not the password")
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert b"Wrong login or password." in wrong_password.data and b"Wrong login or password." in unknown_user.data


def test_login_rate_limit(auth: Auth) -> None:
    for _ in range(5):
        auth.login("alice", "bad password 123")
    blocked = auth.login("alice", PASSWORD)  # even the right password waits now
    assert blocked.status_code == 429 and b"Too many failed attempts" in blocked.data


def test_session_cookie_is_hardened(client: FlaskClient, auth: Auth) -> None:
    response = auth.login()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Content-Security-Policy" in client.get("/login").headers


def test_csrf_required_on_every_form(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    for url, data in (("/lists/alice@example.com/add", {"kind": "block", "pattern": "@x.example"}),
                      ("/logout", {}), ("/password", {"current": PASSWORD, "new": "x" * 12, "confirm": "x" * 12})):
        assert client.post(url, data=data).status_code == 400
    assert _entry_ids(client.application, "alice@example.com") == {}


def test_add_remove_search_entries_with_clear_errors(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = "/lists/alice@example.com"
    r = auth.post(page + "/add", {"kind": "block", "pattern": "*.Spam.example", "comment": "junk"}, page)
    assert r.status_code == 302
    r = auth.post(page + "/add", {"kind": "allow", "pattern": "*.spam.example"}, page)
    assert r.status_code == 400 and b"remove it there first" in r.data
    r = auth.post(page + "/add", {"kind": "allow", "pattern": "not an address"}, page)
    assert r.status_code == 400 and b"not an address like" in r.data
    assert b"value=\"not an address\"" in r.data  # the input is kept for correction
    auth.post(page + "/add", {"kind": "allow", "pattern": "friend@pal.example"}, page)
    found = client.get(page + "?q=spam").data.replace(b"<wbr>", b"")
    assert b'<td class="pattern">*.spam.example</td>' in found
    assert b'<td class="pattern">friend@pal.example</td>' not in found
    ids = _entry_ids(client.application, "alice@example.com")
    ask = auth.post(f"{page}/remove/{ids['*.spam.example']}", {}, page)
    assert ask.status_code == 200 and b"Remove *.spam.example from the block list" in ask.data
    assert set(_entry_ids(client.application, "alice@example.com")) == {"*.spam.example", "friend@pal.example"}
    assert auth.post(f"{page}/remove/{ids['*.spam.example']}", {"confirm": "1"}, page).status_code == 302
    assert set(_entry_ids(client.application, "alice@example.com")) == {"friend@pal.example"}


def test_csv_import_and_export(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = "/lists/alice2@example.com"
    data = {"file": (io.BytesIO(b"kind,pattern,comment\nblock,@bad.example,x\nallow,oops,\n"), "l.csv"),
            "csrf_token": token(client, page)}
    r = client.post(page + "/import", data=data, content_type="multipart/form-data")
    assert r.status_code == 400 and b"line 3" in r.data and b"Nothing was imported" in r.data
    assert "@bad.example" not in client.get(page + "/export.csv").get_data(as_text=True)
    data = {"file": (io.BytesIO(b"kind,pattern,comment\nblock,@bad.example,x\n"), "l.csv"),
            "csrf_token": token(client, page)}
    r = client.post(page + "/import", data=data, content_type="multipart/form-data")
    assert r.status_code == 302 and r.headers["Location"] == page  # post, redirect, get
    assert "Imported 1 entries" in client.get(page).get_data(as_text=True)
    csv_text = client.get(page + "/export.csv").get_data(as_text=True)
    assert "block,'@bad.example,x" in csv_text
    data = {"file": (io.BytesIO(b"allow,boss@trusted.example,,yes\n"), "l.csv"), "csrf_token": token(client, page)}
    client.post(page + "/import", data=data, content_type="multipart/form-data")
    assert "1 of them trusted without authentication: anyone can forge" in client.get(page).get_data(as_text=True)


def test_user_cannot_touch_another_users_lists(client: FlaskClient, auth: Auth, app: Flask) -> None:
    with app.extensions["stronghold_store"].session() as s:
        bob_entry = entries.add_entry(s, "bob@example.com", "allow", "mom@family.example")
    auth.login("alice")
    assert client.get("/lists/bob@example.com").status_code == 404
    assert client.get("/lists/global").status_code == 404
    assert client.get("/lists/bob@example.com/export.csv").status_code == 404
    # direct POSTs with bob's ids, as an attacker would
    assert auth.post(f"/lists/bob@example.com/remove/{bob_entry.id}", {"confirm": "1"}).status_code == 404
    assert auth.post(f"/lists/alice@example.com/remove/{bob_entry.id}", {"confirm": "1"}).status_code == 404
    assert auth.post("/lists/bob@example.com/add", {"kind": "block", "pattern": "@x.example"}).status_code == 404
    assert set(_entry_ids(app, "bob@example.com")) == {"mom@family.example"}


def test_user_sees_only_own_mail_and_cannot_act_on_others(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mine = _log_message(app, ("alice@example.com",), "for alice")
    theirs = _log_message(app, ("bob@example.com",), "for bob <script>alert(1)</script>")
    auth.login("alice")
    page = client.get("/messages/").get_data(as_text=True)
    assert "for alice" in page and "for bob" not in page
    assert client.get(f"/messages/{theirs}").status_code == 404
    assert client.get("/messages/?all=1").get_data(as_text=True).count("for bob") == 0
    assert auth.post(f"/messages/{theirs}/feedback", {"is_spam": "1"}, "/messages/").status_code == 404
    assert auth.post(f"/messages/{theirs}/list", {"kind": "block"}, "/messages/").status_code == 404
    assert auth.post(f"/messages/{mine}/feedback", {"is_spam": "1"}, "/messages/").status_code == 302
    with app.extensions["stronghold_store"].session() as s:
        assert [(fb.message_id, fb.is_spam) for fb, _ in messagelog.pending(s)] == [(mine, True)]


def test_block_sender_from_recent_mail(client: FlaskClient, auth: Auth, app: Flask) -> None:
    mid = _log_message(app, ("alice@example.com", "bob@example.com"), sender="pest@nuisance.example")
    auth.login("alice")
    auth.post(f"/messages/{mid}/list", {"kind": "block"}, "/messages/")
    assert "pest@nuisance.example" in _entry_ids(app, "alice@example.com")
    assert _entry_ids(app, "bob@example.com") == {}  # only the addresses alice owns


def test_output_is_escaped(client: FlaskClient, auth: Auth, app: Flask) -> None:
    root_view = _log_message(app, ("bob@example.com",), "<script>alert(1)</script>")
    auth.login("root")
    page = client.get("/messages/?all=1").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert client.get(f"/messages/{root_view}").status_code == 200


def test_admin_manages_users_and_reset_password_ends_sessions(app: Flask, auth: Auth) -> None:
    other = app.test_client()
    Auth(other).login("bob")
    assert other.get("/lists/").status_code == 302
    auth.login("root")
    bob = app.config["user_ids"]["bob"]
    assert auth.post(f"/admin/users/{bob}", {"action": "password", "password": "brand new password"},
                     "/admin/users").status_code == 302
    assert other.get("/lists/bob@example.com").status_code == 302  # bob's old session is gone
    assert Auth(app.test_client()).login("bob", "brand new password").status_code == 302
    r = auth.post("/admin/users", {"login": "carol", "password": "short", "addresses": ""}, "/admin/users")
    assert r.status_code == 400 and b"at least 10" in r.data
    auth.post("/admin/users", {"login": "carol", "password": PASSWORD, "addresses": "carol@example.com"},
              "/admin/users")
    assert Auth(app.test_client()).login("carol").status_code == 302
    root = app.config["user_ids"]["root"]
    auth.post(f"/admin/users/{root}", {"action": "delete", "confirm": "1"}, "/admin/users")
    assert Auth(app.test_client()).login("root").status_code == 302  # cannot delete yourself


def test_non_admin_cannot_reach_admin_pages(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("alice")
    assert client.get("/admin/users").status_code == 403
    bob = app.config["user_ids"]["bob"]
    assert auth.post(f"/admin/users/{bob}", {"action": "password", "password": "x" * 12}).status_code == 403


def test_password_change(client: FlaskClient, auth: Auth) -> None:
    auth.login("alice")
    r = auth.post("/password", {"current": "wrong one!!", "new": "n" * 12, "confirm": "n" * 12}, "/password")
    assert r.status_code == 400 and b"not your current password" in r.data
    r = auth.post("/password", {"current": PASSWORD, "new": "another good one", "confirm": "another good one"},
                  "/password")
    assert r.status_code == 302
    assert client.get("/lists/alice@example.com").status_code == 200  # this session stays
    assert Auth(client.application.test_client()).login("alice", "another good one").status_code == 302


def test_dashboard_chart(client: FlaskClient, auth: Auth, app: Flask) -> None:
    _log_message(app, ("alice@example.com",))
    auth.login("alice")
    page = client.get("/").get_data(as_text=True)
    assert "<svg" in page and "clean</a>: <strong>1</strong>" in page and "<rect" in page


@pytest.mark.corpus
def test_feedback_is_learned_and_shown_as_applied(client: FlaskClient, auth: Auth, app: Flask, models_dir,
                                                  tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from stronghold.classifier import Model
    from stronghold.cli import main
    from stronghold.heldback import write as write_heldback
    from stronghold.modelfile import read_passport
    from stronghold.training import tokenize
    from tests.conftest import CORPUS, corpus_files
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    sample = corpus_files(CORPUS, "ham")[:40] + corpus_files(CORPUS, "spam")[:20]
    write_heldback(models / "model.joblib", read_passport(models / "model.joblib"),
                   [tokenize(p.read_bytes()) for p in sample], [False] * 40 + [True] * 20)
    mid = _log_message(app, ("alice@example.com",), "weekly newsletter")
    auth.login("alice")
    auth.post(f"/messages/{mid}/feedback", {"is_spam": "1"}, "/messages/")
    assert "not taken in yet" in client.get("/messages/").get_data(as_text=True)
    monkeypatch.setenv("STRONGHOLD_DATABASE_URL", app.extensions["stronghold_store"].url)
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(models))
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "data"))
    before = Model.load(models / "model.joblib").score({"tok"}).probability
    assert main(["learn", "--from-feedback"]) == 0
    assert read_passport(models / "model.joblib").learned_spam == 1  # judged not worse, promoted
    assert main(["model", "candidates"]) == 0  # the ledger says who taught it, from the web
    assert Model.load(models / "model.joblib").score({"tok"}).probability > before
    assert "taken in" in client.get("/messages/").get_data(as_text=True)
    assert "not taken in yet" not in client.get("/messages/").get_data(as_text=True)
    assert main(["learn", "--from-feedback"]) == 2  # nothing pending any more
