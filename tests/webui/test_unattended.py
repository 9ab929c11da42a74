"""Held mail no enabled user sees (a disabled user's, an address nobody has, a previous owner's):
admins see it on their own, release or delete it, and the purge still deletes it."""

from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from stronghold.store import accounts, quarantine
from stronghold.store.tables import QuarantineItem
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import Auth


@pytest.fixture
def app(releasing_app: Flask) -> Flask:
    return releasing_app


def hold(app: Flask, rcpt: str, subject: str, age_days: float = 0) -> int:
    raw = f"From: promo@deals.example\r\nSubject: {subject}\r\n\r\nbuy now\r\n".encode()
    with app.extensions["stronghold_store"].session() as s:
        [item] = quarantine.hold(s, raw, recipients=[rcpt], sender="promo@deals.example", subject=subject,
                                 queue_id="QU", score=0.999, category="spam", reason="spam", trace="", virus=None)
        s.execute(update(QuarantineItem).where(QuarantineItem.id == item).values(ts=time.time() - age_days * 86400))
    return item


def disable(app: Flask, login: str) -> None:
    with app.extensions["stronghold_store"].session() as s:
        user = accounts.get_user(s, login)
        assert user is not None
        accounts.set_disabled(user, True)


def test_admin_sees_only_what_nobody_else_sees_and_acts_on_it(client: FlaskClient, auth: Auth, app: Flask,
                                                              sink: SmtpSink) -> None:
    hold(app, "alice@example.com", "for alice")
    bobs = hold(app, "bob@example.com", "for bob")
    nobodys = hold(app, "nobody@example.com", "for nobody")
    disable(app, "bob")
    auth.login("root")
    page = client.get("/junk/").get_data(as_text=True)
    assert "2 held messages are for disabled users or addresses no user has" in page
    assert "deleted after 30 days" in page and "for alice" in page  # everyone's, as before
    only = client.get("/junk/?unattended=1").get_data(as_text=True)
    assert "for bob" in only and "user bob is disabled" in only
    assert "for nobody" in only and "no user has this address" in only
    assert "for alice" not in only
    assert "1 held message only administrators see" in client.get("/admin/users").get_data(as_text=True)
    auth.post(f"/junk/{bobs}/release", {}, "/junk/")
    assert [m.recipients for m in sink.wait_for(lambda m: m.recipients == ["bob@example.com"])] == [
        ["bob@example.com"]]
    auth.post(f"/junk/{nobodys}/delete", {"confirm": "1"}, "/junk/")
    page = client.get("/junk/?unattended=1").get_data(as_text=True)
    assert "Nothing waits here" in page and f'id="item-{nobodys}"' not in page


def test_a_previous_owners_mail_waits_for_admins_too(client: FlaskClient, auth: Auth, app: Flask) -> None:
    old = hold(app, "bob@example.com", "bob's old mail", age_days=2)
    with app.extensions["stronghold_store"].session() as s:
        bob = accounts.get_user(s, "bob")
        alice = accounts.get_user(s, "alice")
        assert bob is not None and alice is not None
        accounts.release_address(s, bob, "bob@example.com")
        accounts.assign_address(s, alice, "bob@example.com")
    auth.login("root")
    only = client.get("/junk/?unattended=1").get_data(as_text=True)
    assert f'id="item-{old}"' in only and "held before alice got this address" in only


def test_users_cannot_ask_for_it(client: FlaskClient, auth: Auth, app: Flask) -> None:
    hold(app, "bob@example.com", "for bob")
    disable(app, "bob")
    auth.login("alice")
    page = client.get("/junk/?unattended=1").get_data(as_text=True)
    assert "for bob" not in page and "only administrators" not in page


def test_disabling_says_where_their_held_mail_goes(client: FlaskClient, auth: Auth, app: Flask) -> None:
    hold(app, "bob@example.com", "for bob")
    auth.login("root")
    auth.post(f"/admin/users/{app.config['user_ids']['bob']}", {"action": "disable"}, "/admin/users")
    page = client.get("/admin/users").get_data(as_text=True)
    assert "User bob disabled. 1 held message of theirs now shows only on the Junk page of administrators" in page


def test_the_purge_deletes_it_like_any_held_mail(app: Flask) -> None:
    gone = hold(app, "bob@example.com", "old", age_days=31)
    kept = hold(app, "bob@example.com", "new", age_days=1)
    disable(app, "bob")
    with app.extensions["stronghold_store"].session() as s:
        assert quarantine.count_unattended(s) == 2
        assert quarantine.purge_older_than(s, 30) == 1
        assert [h.id for h in quarantine.find(s, recipients=None, unattended=True)] == [kept]
        assert quarantine.get(s, gone) is None
