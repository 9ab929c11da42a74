"""The whole promise, end to end: what the filter holds, its recipient gets back from the browser.

Postfix + the milter (real clamd, real model) deliver over LMTP into Dovecot; m1 allow-lists the
sender, m3 does not; m3 releases the held copy on the Junk page in Chromium; IMAP shows where
every copy went.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from stronghold.classifier import Model
from stronghold.store import accounts, entries, quarantine
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files
from tests.e2e import mail
from tests.harness.browser import WebProcess, launch, screenshot
from tests.harness.imapbox import Mailboxes

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.dovecot, pytest.mark.browser, pytest.mark.corpus]
PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def web(dovecot_stack: Stack) -> Iterator[WebProcess]:
    """`stronghold web` on the mail stack's database, releasing through its Postfix."""
    with dovecot_stack.store.session() as s:
        for address in ("m1@example.com", "m3@example.com"):
            if accounts.get_user(s, address) is None:
                accounts.assign_address(s, accounts.add_user(s, address, PASSWORD), address)
    home = dovecot_stack.home
    proc = WebProcess(home, {"data_dir": str(home / "web"), "database_url": dovecot_stack.db_url,
                             "digest_check_minutes": 0,
                             "release_smtp": f"127.0.0.1:{dovecot_stack.postfix.release_port}"}).start()
    yield proc
    proc.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as p:
        browser = launch(p)
        yield browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
        browser.close()


def test_held_for_m3_clean_for_m1_then_released_once_from_the_browser(
        dovecot_stack: Stack, web: WebProcess, page: Page, mailboxes: Mailboxes, corpus: Path,
        model: Model) -> None:
    spam = next(p for p in corpus_files(corpus, "spam")
                if model.score(tokenize(p.read_bytes())).probability >= 0.9999).read_bytes()
    with dovecot_stack.store.session() as s:
        # unsigned test mail: m1 trusts the sender without authentication (tested on its own elsewhere)
        entries.add_entry(s, "m1@example.com", "allow", "offers@chain.example", trust_unauthenticated=True)
    tid, data = mail.tagged(spam)
    assert mail.send(dovecot_stack.postfix.port, "offers@chain.example", ["m1@example.com", "m3@example.com"],
                     data) == {}
    found = mailboxes.wait_for("m1@example.com", tid)
    assert list(found) == ["INBOX"] and mail.headers(found["INBOX"][0])["X-Spam-Flag"] == "NO"
    with dovecot_stack.store.session() as s:
        held = [h for h in quarantine.find(s, recipients=["m1@example.com", "m3@example.com"])
                if h.sender == "offers@chain.example"]
    assert [h.recipient for h in held] == ["m3@example.com"]
    assert mailboxes.where("m3@example.com", tid) == {}

    page.goto(web.url + "/login")
    page.get_by_label("Login").fill("m3@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation").get_by_role("link", name="Junk").click()
    page.goto(f"{web.url}/junk/{held[0].id}")
    page.get_by_role("button", name="Release to inbox").click()
    expect(page.locator(".flashes")).to_contain_text("on its way to m3@example.com")
    found = mailboxes.wait_for("m3@example.com", tid)
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1  # released, not filed into Junk again
    page.goto(f"{web.url}/junk/{held[0].id}")
    page.get_by_role("button", name="Release to inbox").click()
    expect(page.locator(".flashes")).to_contain_text("Already released")
    screenshot(page, "chain-released-twice")
    marker, note = mail.simple(subject="marker")  # once this is in, every earlier delivery is too
    for user in ("m1@example.com", "m3@example.com"):
        assert mail.send(dovecot_stack.postfix.release_port, "marker@sender.example", [user], note) == {}
        mailboxes.wait_for(user, marker)
    assert len(mailboxes.where("m3@example.com", tid)["INBOX"]) == 1
    assert len(mailboxes.where("m1@example.com", tid)["INBOX"]) == 1
