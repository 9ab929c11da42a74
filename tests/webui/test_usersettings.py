"""The settings page: a user's own spam threshold (within the admin's bounds) and digest choice."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from stronghold.store import accounts, entries
from tests.webui.conftest import Auth


def _user(app: Flask, login: str):
    with app.extensions["stronghold_store"].session() as s:
        user = accounts.get_user(s, login)
        return user.spam_threshold, user.digest


def _csrf(client: FlaskClient) -> str:
    page = client.get("/settings/").get_data(as_text=True)
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def test_threshold_within_bounds_is_saved_and_reaches_the_milters_lists(client: FlaskClient, auth: Auth,
                                                                        app: Flask) -> None:
    auth.login()
    store = app.extensions["stronghold_store"]
    with store.session() as s:
        before = entries.lists_version(s)
    r = client.post("/settings/", data={"csrf_token": _csrf(client), "threshold": "0.75", "digest": "weekly"})
    assert r.status_code == 302
    assert _user(app, "alice") == (0.75, "weekly")
    with store.session() as s:
        assert entries.lists_version(s) > before  # milters reload thresholds with the lists
    cache = entries.ListCache(store, refresh=0, threshold_bounds=(0.5, 0.99))
    assert cache().threshold_for("alice@example.com") == 0.75
    assert entries.ListCache(store, refresh=0)().threshold_for("alice@example.com") is None  # bounds off
    r = client.post("/settings/", data={"csrf_token": _csrf(client), "threshold": "", "digest": "off"})
    assert r.status_code == 302 and _user(app, "alice") == (None, "off")  # back to the system's


def test_out_of_bounds_or_garbage_is_refused_and_nothing_changes(client: FlaskClient, auth: Auth,
                                                                 app: Flask) -> None:
    auth.login()
    bounds = "the threshold must be between 0.5 and 0.99"  # the same for nan and inf as for 1.5
    for value, words in (("0.2", bounds), ("1.5", bounds), ("nan", bounds), ("-inf", bounds),
                         ("abc", "'abc' is not a number")):
        r = client.post("/settings/", data={"csrf_token": _csrf(client), "threshold": value, "digest": "off"})
        alert = re.search(r'role="alert">(.*?)</p>', r.get_data(as_text=True))
        assert r.status_code == 400 and alert is not None and alert.group(1) == words.replace("'", "&#39;"), value
    assert _user(app, "alice") == (None, "daily")
    r = client.post("/settings/", data={"threshold": "0.7", "digest": "off"})  # no CSRF token
    assert r.status_code == 400 and _user(app, "alice") == (None, "daily")


def test_bounds_narrowed_later_clamp_what_users_chose(app: Flask) -> None:
    store = app.extensions["stronghold_store"]
    with store.session() as s:
        accounts.set_spam_threshold(s, accounts.get_user(s, "alice"), 0.55, (0.5, 0.99))
    assert entries.ListCache(store, refresh=0, threshold_bounds=(0.8, 0.95))().threshold_for(
        "alice@example.com") == 0.8
