"""Wording found in a QA pass: no repeated category in Junk's Why, the virus sentence follows
virus_action, no Disable/Delete on one's own Users row."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from stronghold.store import quarantine
from stronghold.store.db import Store
from tests.webui.conftest import PASSWORD, Auth, token
from webui import create_app


def _hold(app: Flask, rcpt: str, category: str, reason: str, virus: str | None = None) -> int:
    raw = f"From: x@sender.example\r\nTo: {rcpt}\r\nSubject: held\r\n\r\nbody\r\n".encode()
    with app.extensions["stronghold_store"].session() as s:
        return quarantine.hold(s, raw, recipients=[rcpt], sender="x@sender.example", subject="held", queue_id="Q3",
                               score=0.9995, category=category, reason=reason, trace="t", virus=virus)[0]


def _why(html: str) -> list[str]:
    """The text beside each category badge, as a reader sees it."""
    return [" ".join(re.sub(r"<[^>]+>", " ", m).split())
            for m in re.findall(r'<span class="badge b-\w+">(.*?)</(?:td|dd)>', html, re.S)]


def test_junk_why_does_not_repeat_the_category(client: FlaskClient, auth: Auth, app: Flask) -> None:
    spam = _hold(app, "alice@example.com", "spam", "spam (high score)")
    plain = _hold(app, "alice@example.com", "spam", "spam")
    virus = _hold(app, "alice@example.com", "virus", "virus Stronghold.Test.EICAR.UNOFFICIAL",
                  "Stronghold.Test.EICAR.UNOFFICIAL")
    auth.login("root")
    listing = _why(client.get("/junk/").get_data(as_text=True))
    assert sorted(listing) == ["spam", "spam (high score)", "virus Stronghold.Test.EICAR.UNOFFICIAL"]
    assert _why(client.get(f"/junk/{spam}").get_data(as_text=True)) == ["spam (high score)"]
    assert _why(client.get(f"/junk/{plain}").get_data(as_text=True)) == ["spam"]
    assert _why(client.get(f"/junk/{virus}").get_data(as_text=True)) == ["virus Stronghold.Test.EICAR.UNOFFICIAL"]


def test_junk_virus_sentence_follows_virus_action(client: FlaskClient, auth: Auth, store: Store,
                                                  tmp_path: Path) -> None:
    auth.login("alice")
    assert "Mail carrying a virus is not held: it is refused" in client.get("/junk/").get_data(as_text=True)
    held = create_app({"data_dir": tmp_path / "data2", "database_url": store.url, "TESTING": True,
                       "virus_action": "quarantine"})
    other = held.test_client()
    other.post("/login", data={"login": "alice", "password": PASSWORD, "csrf_token": token(other, "/login")})
    page = other.get("/junk/").get_data(as_text=True)
    assert "Mail carrying a virus is held too, but only an administrator" in page
    held.extensions["stronghold_store"].dispose()


def test_no_disable_or_delete_on_ones_own_row(client: FlaskClient, auth: Auth) -> None:
    auth.login("root")
    page = client.get("/admin/users").get_data(as_text=True)
    rows = dict(re.findall(r'<tr id="user-(\w+)".*?>(.*?)</tr>', page, re.S))
    assert set(rows) == {"alice", "bob", "root"}
    assert "Delete user root" not in rows["root"] and 'value="disable"' not in rows["root"]
    assert "Reset password" not in rows["root"] and 'href="/password">Change your password' in rows["root"]
    assert "Delete user alice" in rows["alice"] and 'value="disable"' in rows["alice"]


