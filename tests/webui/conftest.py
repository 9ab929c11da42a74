"""Flask test-client fixtures: an app on a fresh store, seeded users, an auth helper."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Page, sync_playwright

from stronghold.store import accounts
from stronghold.store.db import Store
from tests.conftest import STORE_KINDS, fresh_store
from tests.harness.browser import launch
from tests.harness.smtpsink import SmtpSink
from webui import create_app

PASSWORD = "a long enough password"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(page: Page, base: str, user: str = "alice", password: str = PASSWORD) -> None:
    """Log ``user`` in through the login form of the web UI at ``base``, in a real browser."""
    page.goto(base + "/login")
    page.get_by_label("Login").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def seed(store: Store) -> dict[str, int]:
    ids = {}
    with store.session() as s:
        for login, addrs, admin in (("alice", ["alice@example.com", "alice2@example.com"], False),
                                    ("bob", ["bob@example.com"], False), ("root", [], True)):
            user = accounts.add_user(s, login, PASSWORD, admin=admin)
            for a in addrs:
                accounts.assign_address(s, user, a)
            ids[login] = user.id
    return ids


USER_IDS = pytest.StashKey[dict[str, int]]()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, migrated store (as tests/conftest.py's); for a test that uses the app, with the
    users ``seed`` adds already in it (seeded once into the session's template)."""
    seeded = bool({"app", "releasing_app"} & set(request.fixturenames))
    db, ids = fresh_store(request, tmp_path, seed if seeded else None)
    if seeded:
        assert isinstance(ids, dict)
        request.node.stash[USER_IDS] = ids
    yield db
    db.dispose()


@pytest.fixture
def app(store: Store, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Flask]:
    """A fresh store per test, so login counters and sessions start empty too."""
    yield from _app(store, tmp_path, request.node.stash[USER_IDS])


@pytest.fixture
def releasing_app(store: Store, tmp_path: Path, sink: SmtpSink, request: pytest.FixtureRequest) -> Iterator[Flask]:
    """The same, with quarantine releases going to the test's SMTP sink (modules that release
    define ``app`` as this one)."""
    yield from _app(store, tmp_path, request.node.stash[USER_IDS], release_smtp=f"127.0.0.1:{sink.port}")


def _app(store: Store, tmp_path: Path, user_ids: dict[str, int], **settings: object) -> Iterator[Flask]:
    """The web UI on ``store``, which holds the users ``seed`` adds (ids in ``user_ids``)."""
    with store.session() as s:  # seeded as the template was: the same logins, ids and addresses
        assert {u.login: u.id for u in accounts.all_users(s)} == user_ids
    application = create_app({"data_dir": tmp_path / "data", "database_url": store.url, "TESTING": True,
                              **settings})
    application.config["user_ids"] = dict(user_ids)
    yield application
    application.extensions["stronghold_store"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token(client: FlaskClient, url: str) -> str:
    page = client.get(url, follow_redirects=True)
    found = _TOKEN.search(page.get_data(as_text=True))
    assert found, f"no CSRF token on {url} ({page.status_code})"
    return found.group(1)


class Auth:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, login: str = "alice", password: str = PASSWORD):
        return self.client.post("/login", data={"login": login, "password": password,
                                                "csrf_token": token(self.client, "/login")})

    def post(self, url: str, data: dict, page: str = "/lists/"):
        """POST as a browser would: with a token taken from a page of the app."""
        return self.client.post(url, data={**data, "csrf_token": token(self.client, page)})


@pytest.fixture
def auth(client: FlaskClient) -> Auth:
    return Auth(client)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, one per test module."""
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh desktop-sized browser context per test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    yield context.new_page()
    context.close()
