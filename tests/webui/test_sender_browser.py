"""What a user sees of a message's sender, in real Chromium: a display name that looks like another
address is never shown as the sender (Recent mail, the message page, Junk, a held message), two From
headers are marked, a bounce's null envelope sender is shown, a mark a rollback set aside says so,
and a GET of a list's add address (a reload, a login landing there) leads back to the list's form."""

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
from stronghold.store import entries, ledger, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.tokens import features
from stronghold.verdict import Envelope
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.harness.milterproc import write_config
from tests.webui.conftest import PASSWORD, login, seed

pytestmark = pytest.mark.browser

SPOOF = (b"From: =?utf-8?q?boss=40bank=2Eexample?= <evil@attacker.example>\r\nTo: alice@example.com\r\n"
         b"Subject: Wire the money today\r\n\r\nUrgent.\r\n")
TWICE = (b"From: Shop <news@shop.example>\r\nFrom: billing@other.example\r\nTo: alice@example.com\r\n"
         b"Subject: Two senders\r\n\r\nHello.\r\n")
REAL, CLAIMED = "evil@attacker.example", "boss@bank.example"


@dataclass
class Site:
    web: WebProcess
    store: Store
    users: dict[str, int]

    def log(self, raw: bytes, sender: str, queue_id: str) -> int:
        msg = parse(raw)
        env = Envelope(sender, ("alice@example.com",), queue_id=queue_id)
        verdict = decide(env, msg, Findings(lists=ListIndex([])), Policy())
        with self.store.session() as s:
            return messagelog.record(s, env, msg, verdict, features(msg))

    def hold(self, raw: bytes, sender: str, queue_id: str) -> int:
        with self.store.session() as s:
            return quarantine.hold(s, raw, recipients=["alice@example.com"], sender=sender, subject="held",
                                   queue_id=queue_id, score=0.999, category="spam", reason="score 0.999 >= 0.99",
                                   trace="", virus=None, header_from=parse(raw).header("from") or "")[0]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = shared_tmpdir("stronghold-senderweb-")
    url = f"sqlite:///{home / 'store.db'}"
    store = Store(url)
    store.upgrade()
    users = seed(store)
    settings = {"data_dir": str(home / "data"), "database_url": url, "digest_check_minutes": 0}
    web = WebProcess(home, settings)
    write_config(web.config, {**settings, "web_bind": f"127.0.0.1:{web.port}", "web_base_url": web.url})
    web.start()
    yield Site(web, store, users)
    web.stop()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)


def _expect_real_sender(where) -> None:
    expect(where.locator(".from-header")).to_have_text(REAL)
    expect(where.locator(".from-warning")).to_contain_text(f'"{CLAIMED}" looks like another address')
    expect(where.locator(".via")).to_have_text("envelope sender <> (bounce)")


def test_a_spoofing_display_name_is_shown_as_a_name_never_as_the_sender(site: Site, page: Page) -> None:
    mid = site.log(SPOOF, "", "QS1")  # a bounce: the null envelope sender
    item = site.hold(SPOOF, "", "QS1")
    login(page, site.web.url)
    page.goto(f"{site.web.url}/messages/")
    row = page.locator("tr", has_text="Wire the money today")
    _expect_real_sender(row.locator("td.from"))
    screenshot(page, "sender-spoof-recent")
    row.get_by_role("link", name="Wire the money today").click()
    facts = page.locator("dl.facts")
    expect(facts.locator("dd.from .from-header")).to_have_text(REAL)
    expect(facts.locator("dd.from .from-warning")).to_contain_text("it is not the sender")
    expect(facts).to_contain_text("<> (bounce)")
    expect(page.get_by_role("heading", name=f"Sender: {REAL}")).to_be_visible()  # the buttons act on the real one
    page.goto(f"{site.web.url}/junk/")
    _expect_real_sender(page.locator(f"#item-{item}"))
    page.goto(f"{site.web.url}/junk/{item}")
    expect(page.locator("#held-facts dd.from .from-header")).to_have_text(REAL)
    expect(page.locator("#held-facts")).to_contain_text("<> (bounce)")
    expect(page.locator("dl.headers")).to_contain_text(f'{REAL} [its display name "{CLAIMED}" looks like another')
    screenshot(page, "sender-spoof-held")
    assert mid


def test_two_from_headers_are_marked_everywhere(site: Site, page: Page) -> None:
    site.log(TWICE, "news@shop.example", "QS2")
    item = site.hold(TWICE, "news@shop.example", "QS2")
    login(page, site.web.url)
    page.goto(f"{site.web.url}/messages/")
    row = page.locator("tr", has_text="Two senders")
    expect(row.locator(".from-warning")).to_have_text("2 From headers: a sign of forgery")
    row.get_by_role("link", name="Two senders").click()
    expect(page.locator("dl.facts dd.from .from-warning")).to_have_text("2 From headers: a sign of forgery")
    page.goto(f"{site.web.url}/junk/")
    cell = page.locator(f"#item-{item}")
    expect(cell.locator(".from-header")).to_have_text("news@shop.example, billing@other.example")
    expect(cell.locator(".from-warning")).to_have_text("2 From headers: a sign of forgery")
    page.goto(f"{site.web.url}/junk/{item}")
    expect(page.locator("#held-facts dd.from .from-warning")).to_have_text("2 From headers: a sign of forgery")


def test_a_mark_a_rollback_set_aside_says_it_waits_for_the_operator(site: Site, page: Page) -> None:
    raw = b"From: deals@promo.example\r\nTo: alice@example.com\r\nSubject: Cheap watches\r\n\r\nBuy.\r\n"
    mid = site.log(raw, "deals@promo.example", "QS3")
    tokens = features(parse(raw))
    with site.store.session() as s:
        mark = messagelog.set_feedback(s, mid, site.users["alice"], True)
        messagelog.mark_applied(s, [mark.id])  # taken in by a learning run...
        ledger.record(s, [tokens], [True], source="web", who="alice")
        assert ledger.restore(s, {}, {ledger.content_hash(tokens): True}) == 1  # ...then rolled back
    login(page, site.web.url)
    page.goto(f"{site.web.url}/messages/")
    row = page.locator("tr", has_text="Cheap watches")
    expect(row.locator(".fb")).to_have_text("marked spam · set aside by a rollback")
    expect(row.locator(".fb")).not_to_contain_text("taken in")
    page.goto(f"{site.web.url}/messages/{mid}")
    said = page.locator("span.fb")
    expect(said).to_contain_text("a model rollback set this mark aside")
    expect(said).to_contain_text("'stronghold learn --readmit'")
    expect(said).not_to_contain_text("taken it in")
    page.get_by_role("button", name="Not spam").click()  # marked again: it stays aside (stronghold.store.ledger)
    expect(page.locator(".flashes")).to_contain_text("A model rollback set this message's mark aside")
    with site.store.session() as s:
        assert ledger.readmit(s) == 1
    page.reload()  # readmitted: the mark is an ordinary one again
    expect(page.locator("span.fb")).to_contain_text("You marked this not spam; the filter takes it in at its next")


def test_block_anyway_then_a_get_of_the_add_address_leads_back_to_the_form(site: Site, page: Page) -> None:
    base = f"{site.web.url}/lists/alice@example.com"
    login(page, site.web.url)
    page.goto(base)
    page.locator("#pattern-block").fill("@example.com")
    page.locator("#pattern-block").press("Enter")
    expect(page.get_by_role("heading", name="Block @example.com?")).to_be_visible()
    page.get_by_role("button", name="Block anyway").click()
    expect(page.locator(".flashes")).to_contain_text("@example.com added to the block list")
    page.goto(base + "/add")  # the confirmation page's address, as a reload or a bookmark asks for it
    assert page.url == base + "#h-block"
    expect(page.locator("#pattern-block")).to_be_visible()
    expect(page.get_by_role("heading", name="Not here")).to_have_count(0)
    page.context.clear_cookies()  # logged out: the login sends them on to the add address
    page.goto(base + "/add")
    page.get_by_label("Login").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#pattern-block")).to_be_visible()
    assert page.url == base + "#h-block"
    with site.store.session() as s:
        assert [e.pattern for e in entries.entries(s, "alice@example.com", "block")] == ["@example.com"]
