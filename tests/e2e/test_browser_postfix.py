"""Block a sender in the browser, see Postfix refuse it; unblock, see it delivered."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

from stronghold.store import accounts, entries
from tests.conftest import Stack
from tests.e2e import mail
from tests.harness.browser import WebProcess, launch, screenshot

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus, pytest.mark.browser]
PASSWORD = "browser test password"


@pytest.fixture
def web(stack: Stack) -> Iterator[WebProcess]:
    with stack.store.session() as s:
        user = accounts.get_user(s, "quinn") or accounts.add_user(s, "quinn", PASSWORD)  # the stack outlives a test
        accounts.assign_address(s, user, "quinn@example.com")
    process = WebProcess(stack.home, {"data_dir": str(stack.home / "web"), "database_url": stack.db_url}).start()
    yield process
    process.stop()


def test_block_in_browser_then_unblock(stack: Stack, web: WebProcess) -> None:
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto(web.url + "/login")
        page.get_by_label("Login").fill("quinn")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.goto(web.url + "/lists/quinn@example.com")
        page.locator("#pattern-block").fill("@pushy-vendor.example")
        page.get_by_role("button", name="Add to block list").click()
        expect(page.locator("#list-block")).to_contain_text("@pushy-vendor.example")

        tid, data = mail.simple(sender="sales@pushy-vendor.example")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            mail.send(stack.postfix.port, "sales@pushy-vendor.example", ["quinn@example.com"], data)
        assert err.value.recipients["quinn@example.com"][0] == 550

        page.get_by_role("button", name="Remove @pushy-vendor.example").click()
        page.get_by_role("button", name="Remove", exact=True).click()  # the confirmation page
        expect(page.locator("#list-block")).not_to_contain_text("@pushy-vendor.example")
        assert mail.send(stack.postfix.port, "sales@pushy-vendor.example", ["quinn@example.com"], data) == {}
        assert stack.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data)

        page.goto(web.url + "/messages/?category=blocked")
        expect(page.locator("table.log")).to_contain_text("sales@pushy-vendor.example")
        screenshot(page, "blocked-then-delivered")
        browser.close()


def test_a_global_block_refused_by_postfix_is_explained_to_the_user(stack: Stack, web: WebProcess) -> None:
    """The administrators' global block entry refuses a sender at RCPT in a real Postfix; the user
    whose mail it was reads which global entry it was, and that their own lists come first."""
    with stack.store.session() as s:
        entry = entries.add_entry(s, None, "block", "@casino-wave.example", "admins only: campaign 7")
    _, data = mail.simple(sender="win@casino-wave.example")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        mail.send(stack.postfix.port, "win@casino-wave.example", ["quinn@example.com"], data)
    assert err.value.recipients["quinn@example.com"][0] == 550
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto(web.url + "/login")
        page.get_by_label("Login").fill("quinn")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.goto(web.url + "/messages/?category=blocked")
        row = page.locator("table.log tbody tr", has_text="win@casino-wave.example")
        expect(row).to_contain_text("by the global block list: @casino-wave.example", timeout=20_000)
        row.get_by_role("link").first.click()
        expect(page.locator("ul.why")).to_contain_text(
            "By @casino-wave.example on the global block list, which the administrators keep for everyone. "
            "Your own lists come first")
        expect(page.locator("ul.why")).not_to_contain_text("campaign 7")
        screenshot(page, "global-block-explained")
        browser.close()
    with stack.store.session() as s:
        entries.remove_entry(s, entry.id, [None])
