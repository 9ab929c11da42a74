"""An admin managing people and addresses, and users searching their mail, in real Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import messagelog, quarantine
from stronghold.store.db import Store
from stronghold.verdict import Envelope
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.webui.conftest import PASSWORD, seed

pytestmark = pytest.mark.browser


@dataclass
class Site:
    web: WebProcess
    store: Store

    def receive(self, rcpt: str, subject: str, held: bool = False) -> int:
        """Log a message for ``rcpt`` as the milter does (and hold a copy); the log row's id."""
        raw = (f"From: news@shop.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nHello.\r\n").encode()
        msg = parse(raw)
        env = Envelope("news@shop.example", (rcpt,), queue_id="PEOPLE1")
        with self.store.session() as s:
            row = messagelog.record(s, env, msg, decide(env, msg, Findings(lists=ListIndex([])), Policy()), None)
        if held:
            with self.store.session() as s:
                quarantine.hold(s, raw, recipients=[rcpt], sender="news@shop.example", subject=subject,
                                queue_id="PEOPLE1", score=0.999, category="spam", reason="score 0.999 >= 0.99",
                                trace="", virus=None)
        return row


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = shared_tmpdir("stronghold-people-")
    url = f"sqlite:///{home / 'store.db'}"
    store = Store(url)
    store.upgrade()
    seed(store)
    web = WebProcess(home, {"data_dir": str(home / "data"), "database_url": url, "digest_check_minutes": 0}).start()
    yield Site(web, store)
    web.stop()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)


def login(page: Page, base: str, user: str, password: str = PASSWORD) -> None:
    page.goto(base + "/login")
    page.get_by_label("Login").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.mark.parametrize("typed", ["Привет", "привет", "ÉTÉ", "été", "Ärger"])
def test_search_finds_subjects_in_any_script_as_typed(site: Site, page: Page, typed: str) -> None:
    """Recent mail and Junk search in any case of any script (SQLite's lower() folds only A-Z:
    'Привет' typed exactly as the subject shows found nothing)."""
    for subject in ("Привет, мир", "ÉTÉ promo", "Ärger im Büro"):
        site.receive("bob@example.com", subject, held=True)
    login(page, site.web.url, "bob")
    page.goto(site.web.url + "/messages/")
    page.get_by_label("Search", exact=True).fill(typed)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table tbody")).not_to_contain_text("No messages")
    expect(page.locator("table tbody")).to_contain_text(typed, ignore_case=True)
    page.get_by_role("navigation").get_by_role("link", name="Junk").click()
    page.get_by_label("Sender or subject").fill(typed)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.junk tbody")).not_to_contain_text("Nothing held")
    expect(page.locator("table.junk tbody")).to_contain_text(typed, ignore_case=True)
    screenshot(page, "junk-search-unicode")
