"""The web UI while its PostgreSQL is down, then back: a page that says so (503, no details), nothing
reported as saved, and logins and forms working again by themselves once the server is back."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from stronghold.store import entries
from stronghold.store.db import Store
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.harness.postgres import PostgresCluster
from tests.webui.conftest import PASSWORD, Auth, login, seed, token
from webui import create_app

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL of this test's own: it is stopped and started again."""
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def site(own_cluster: PostgresCluster, tmp_path: Path) -> Iterator[tuple[Flask, Store]]:
    store = Store(own_cluster.create_database("outage"))
    store.upgrade()
    seed(store)
    app = create_app({"data_dir": tmp_path / "data", "database_url": store.url, "TESTING": True})
    yield app, store
    app.extensions["stronghold_store"].dispose()
    store.dispose()


def _text(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def test_pages_and_forms_while_postgresql_is_down_then_back(site: tuple[Flask, Store],
                                                           own_cluster: PostgresCluster) -> None:
    app, store = site
    user = Auth(app.test_client())
    assert user.login("alice").status_code == 302
    lists = "/lists/alice@example.com"
    csrf = token(user.client, lists)
    stranger = app.test_client()
    login_csrf = token(stranger, "/login")
    own_cluster.stop_server()
    try:
        for response in (user.client.get(lists),
                         user.client.post(f"{lists}/add", data={"kind": "block", "pattern": "x@spam.example",
                                                                "csrf_token": csrf}),
                         stranger.post("/login", data={"login": "bob", "password": PASSWORD,
                                                       "csrf_token": login_csrf})):
            page = response.get_data(as_text=True)
            assert response.status_code == 503, (response.status_code, _text(page)[:300])
            assert "The database cannot be reached just now" in page
            assert "Traceback" not in page and "psycopg" not in page.lower()
            assert 'class="flashes' not in page  # no "added" or any other news with it
        assert stranger.get("/login").status_code == 200  # the form itself needs no database
    finally:
        own_cluster.start_server()
    added = user.client.post(f"{lists}/add", data={"kind": "block", "pattern": "x@spam.example",
                                                   "csrf_token": csrf})
    assert added.status_code == 302  # the same login and form, without logging in again
    with store.session() as s:
        assert [e.pattern for e in entries.entries(s, "alice@example.com")] == ["x@spam.example"]
    assert stranger.post("/login", data={"login": "bob", "password": PASSWORD,
                                         "csrf_token": login_csrf}).status_code == 302


@pytest.mark.browser
def test_a_browser_sees_the_outage_and_carries_on_after_it(own_cluster: PostgresCluster, page: Page) -> None:
    """``stronghold web`` in Chromium: the page while PostgreSQL is down, the same login after."""
    home = shared_tmpdir("stronghold-outage-")
    store = Store(own_cluster.create_database("outage_browser"))
    store.upgrade()
    seed(store)
    web = WebProcess(home, {"data_dir": str(home / "data"), "database_url": store.url,
                            "digest_check_minutes": 0}).start()
    try:
        login(page, web.url, "alice")
        expect(page.get_by_role("button", name="Log out alice")).to_be_visible()
        own_cluster.stop_server()
        try:
            page.goto(web.url + "/lists/alice@example.com")
            expect(page.get_by_role("heading", name="Not available just now")).to_be_visible()
            expect(page.locator("main")).to_contain_text("a change you sent may not have been saved")
            screenshot(page, "database-away")
        finally:
            own_cluster.start_server()
        page.reload()
        expect(page.get_by_role("button", name="Add to block list")).to_be_visible()
        expect(page.get_by_role("button", name="Log out alice")).to_be_visible()
    finally:
        web.stop()
        store.dispose()
        shutil.rmtree(home, ignore_errors=True)
