"""Block a sender in the browser, see Postfix refuse it; unblock, see it delivered."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

from stronghold.store import accounts
from tests.conftest import Stack
from tests.e2e import mail
from tests.harness.browser import WebProcess, launch, screenshot

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus, pytest.mark.browser]
PASSWORD = "browser test password"


@pytest.fixture
def web(stack: Stack) -> Iterator[WebProcess]:
    with stack.store.session() as s:
        user = accounts.add_user(s, "quinn", PASSWORD)
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
