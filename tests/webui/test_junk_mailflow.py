"""Release from the Junk page in Chromium, through Postfix's release listener, into Dovecot (read over IMAP)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from devtools.localdovecot import Dovecot
from devtools.localstack import Postfix, free_port
from stronghold.store import accounts, quarantine
from stronghold.store.db import Store
from tests.conftest import shared_tmpdir
from tests.e2e import mail
from tests.harness.browser import WebProcess, screenshot
from tests.harness.imapbox import Mailboxes
from tests.webui.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.postfix, pytest.mark.dovecot]


@pytest.fixture(scope="module")
def site(dovecot: Dovecot) -> Iterator[tuple[WebProcess, Store, Postfix]]:
    """Postfix delivering to the session's Dovecot, and `stronghold web` releasing through it."""
    home = shared_tmpdir("stronghold-junkflow-")
    postfix = Postfix(home / "postfix", free_port(), lmtp=dovecot.lmtp_address, mailboxes=dovecot.addresses)
    postfix.start()
    url = f"sqlite:///{home / 'store.db'}"
    store = Store(url)
    store.upgrade()
    with store.session() as s:
        for address in ("m1@example.com", "m3@example.com"):
            user = accounts.add_user(s, address, PASSWORD)
            accounts.assign_address(s, user, address)
    web = WebProcess(home, {"data_dir": str(home / "data"), "database_url": url, "digest_check_minutes": 0,
                            "release_smtp": f"127.0.0.1:{postfix.release_port}"}).start()
    yield web, store, postfix
    web.stop()
    postfix.stop()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)


def test_m3_releases_in_the_browser_one_copy_reaches_only_m3s_inbox(site: tuple[WebProcess, Store, Postfix],
                                                                    page: Page, mailboxes: Mailboxes) -> None:
    web, store, postfix = site
    tid, raw = mail.simple(sender="news@shop.example", subject="Spring catalogue",
                           extra="X-Spam-Flag: YES\r\n")
    with store.session() as s:  # what the milter holds for m3 (m1 had the sender allow-listed)
        item = quarantine.hold(s, raw, recipients=["m3@example.com"], sender="news@shop.example",
                               subject="Spring catalogue", queue_id="QJUNK1", score=0.9995, category="spam",
                               reason="score 0.9995 >= 0.99", trace="model", virus=None)[0]
    page.goto(web.url + "/login")
    page.get_by_label("Login").fill("m3@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation").get_by_role("link", name="Junk").click()
    page.get_by_role("button", name="Release: Spring catalogue").click()
    expect(page.locator(".flashes")).to_contain_text("on its way to m3@example.com")
    found = mailboxes.wait_for("m3@example.com", tid)
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1  # not filed into Junk again
    page.goto(f"{web.url}/junk/{item}")
    page.get_by_role("button", name="Release to inbox").click()  # a second release
    expect(page.locator(".flashes")).to_contain_text("Already released")
    screenshot(page, "junk-released")
    marker, data = mail.simple(subject="marker")  # queued after everything else: once it is in, all is
    for user in ("m3@example.com", "m1@example.com"):
        assert mail.send(postfix.release_port, "marker@sender.example", [user], data) == {}
        mailboxes.wait_for(user, marker)
    assert len(mailboxes.where("m3@example.com", tid)["INBOX"]) == 1
    assert mailboxes.where("m1@example.com", tid) == {}
    with store.session() as s:
        held = quarantine.get(s, item)
        assert held is not None and held.released_by == "m3@example.com" and held.delivered is not None
