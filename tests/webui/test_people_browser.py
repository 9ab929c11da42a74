"""An admin managing people and addresses, and users searching their mail, in real Chromium."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import check_recipient, decide
from stronghold.store import accounts, entries, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.verdict import Envelope
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.webui.conftest import PASSWORD, login, seed

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


def test_new_user_form_shows_each_problem_beside_its_field_and_keeps_what_was_typed(site: Site, page: Page) -> None:
    """A short password and another user's address: both said beside their fields at once, the
    login, addresses and the Administrator box kept (it came back unticked: fixing the typo
    created a plain user), nothing created until all is right."""
    login(page, site.web.url, "root")
    page.goto(site.web.url + "/admin/users")
    page.get_by_label("Login").fill("carol")
    page.get_by_label("Password (at least 10 characters)").fill("short")
    page.get_by_label("Addresses (space or comma separated)").fill("carol@example.com, bob@example.com")
    page.get_by_label("Administrator", exact=True).check()
    page.get_by_role("button", name="Create user").click()
    expect(page.locator("#err-new-password")).to_contain_text("at least 10 characters")
    expect(page.locator("#err-new-addresses")).to_contain_text("bob@example.com belongs to bob")
    expect(page.get_by_label("Password (at least 10 characters)")).to_have_attribute(
        "aria-describedby", "err-new-password")
    expect(page.locator("#err-new-login")).to_have_count(0)
    expect(page.get_by_label("Login")).to_have_value("carol")
    addresses = page.get_by_label("Addresses (space or comma separated)")
    expect(addresses).to_have_value("carol@example.com, bob@example.com")
    expect(page.get_by_label("Administrator", exact=True)).to_be_checked()
    screenshot(page, "admin-new-user-errors")
    with site.store.session() as s:
        assert accounts.get_user(s, "carol") is None
    page.get_by_label("Password (at least 10 characters)").fill("carols own long password")
    page.get_by_label("Addresses (space or comma separated)").fill("carol@example.com")
    page.get_by_role("button", name="Create user").click()
    expect(page.locator(".flashes")).to_contain_text("User carol created.")
    expect(page.locator("#user-carol")).to_contain_text("admin")
    with site.store.session() as s:
        carol = accounts.get_user(s, "carol")
        assert carol is not None and carol.is_admin and accounts.owned_addresses(carol) == ["carol@example.com"]


def test_a_users_row_says_what_went_wrong_beside_the_field(site: Site, page: Page) -> None:
    """Giving bob alice's address, or a short password: said in bob's row, beside the field (it was
    a flash at the top of a long page, and the address typed was gone), naming alice and the way
    to move an address."""
    login(page, site.web.url, "root")
    page.goto(site.web.url + "/admin/users")
    page.get_by_label("New address for bob").fill("alice2@example.com")
    page.locator("#user-bob").get_by_role("button", name="Add address").click()
    error = page.locator("#user-bob .error")
    expect(error).to_contain_text("alice2@example.com belongs to alice: remove it from alice first")
    expect(page.get_by_label("New address for bob")).to_have_value("alice2@example.com")
    expect(page.get_by_label("New address for bob")).to_be_focused()
    expect(page.locator("#user-alice .error")).to_have_count(0)
    lines = "el => { const r = document.createRange(); r.selectNodeContents(el); return r.getClientRects().length }"
    for cell in (page.locator("table.users th").nth(0), page.locator("table.users th").nth(1),
                 page.locator("#user-alice td").nth(0)):
        assert cell.evaluate(lines) == 1, f"{cell.inner_text()!r} broken over lines"  # was "Lo gi n", "ali ce"
    screenshot(page, "admin-row-error")
    page.get_by_label("New password for bob").fill("short")
    page.locator("#user-bob").get_by_role("button", name="Reset password").click()
    expect(page.locator("#user-bob .error")).to_contain_text("at least 10 characters")
    expect(page.get_by_label("New password for bob")).to_have_attribute("aria-describedby",
                                                                        f"err-pw-{_id(site, 'bob')}")
    with site.store.session() as s:
        assert accounts.authenticate(s, "bob", PASSWORD) is not None


def test_an_admins_own_row_keeps_them_logged_in(site: Site, page: Page) -> None:
    """'Reset password' on one's own row logged the admin out without a word (and needed no
    current password); 'Log out everywhere' did too. Now the row links to the Password page and
    logging out everywhere keeps this browser, as the Password page's button does."""
    elsewhere = page.context.browser.new_context().new_page()  # type: ignore[union-attr]
    login(elsewhere, site.web.url, "root")
    login(page, site.web.url, "root")
    page.goto(site.web.url + "/admin/users")
    own = page.locator("#user-root")
    expect(own.get_by_role("button", name="Reset password")).to_have_count(0)
    own.get_by_role("link", name="Change your password").click()
    expect(page.get_by_role("heading", name="Change your password")).to_be_visible()
    page.goto(site.web.url + "/admin/users")
    page.locator("#user-root").get_by_role("button", name="Log root out everywhere").click()
    expect(page.locator(".flashes")).to_contain_text(re.compile(r"root was logged out everywhere else \(\d+ other"))
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    elsewhere.goto(site.web.url + "/admin/users")
    expect(elsewhere.get_by_role("button", name="Log in")).to_be_visible()
    elsewhere.context.close()


def _id(site: Site, login_name: str) -> int:
    with site.store.session() as s:
        user = accounts.get_user(s, login_name)
        assert user is not None
        return user.id


def _refused_at_rcpt(site: Site, sender: str, rcpt: str) -> int:
    """A recipient refused at RCPT time, logged as the milter's Service does (real precedence table)."""
    with site.store.session() as s:
        index = ListIndex(entries.all_entries(s))
    decision = check_recipient(sender, rcpt, index)
    assert decision is not None
    entry = messagelog.rcpt_reject_entry(Envelope(sender, (rcpt,), queue_id="RCPT1"), rcpt, decision.reason,
                                         " ".join(str(step) for step in decision.trace))
    with site.store.session() as s:
        return messagelog.write(s, [entry])[0]


def _decided(site: Site, sender: str, rcpt: str, subject: str) -> int:
    """A message decided at end of message with every list in the store, and logged."""
    raw = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()
    msg = parse(raw)
    env = Envelope(sender, (rcpt,), queue_id="EOM1")
    with site.store.session() as s:
        index = ListIndex(entries.all_entries(s))
    with site.store.session() as s:
        return messagelog.record(s, env, msg, decide(env, msg, Findings(lists=index), Policy()), {"tok"})


def test_mail_decided_by_a_global_entry_says_so(site: Site, page: Page) -> None:
    """A user whose mail the administrators' global block list refused read only 'reject (sender
    blocked)', as if by their own list, and was offered 'Block sender' for it; now Recent mail and
    the message say which global entry it was, and that their own lists come first."""
    with site.store.session() as s:
        entries.add_entry(s, None, "block", "@casino.example", "internal note: wave of 12 May")
        entries.add_entry(s, "alice@example.com", "block", "@pushy.example", "")
    refused = _refused_at_rcpt(site, "win@casino.example", "alice@example.com")
    own = _decided(site, "sales@pushy.example", "alice@example.com", "Buy now")
    login(page, site.web.url, "alice")
    page.goto(site.web.url + "/messages/")
    expect(page.locator("table tbody tr", has_text="win@casino.example")).to_contain_text(
        "by the global block list: @casino.example")
    expect(page.locator("table tbody tr", has_text="Buy now")).not_to_contain_text("global")
    page.goto(site.web.url + f"/messages/{refused}")
    why = page.locator("ul.why")
    expect(why).to_contain_text("By @casino.example on the global block list, which the administrators keep "
                                "for everyone. Your own lists come first: “Always allow” below")
    expect(why).not_to_contain_text("internal note")  # the admins' comment stays theirs
    screenshot(page, "message-global-block")
    page.goto(site.web.url + f"/messages/{own}")
    expect(page.locator("ul.why")).not_to_contain_text("global")
    login(page, site.web.url, "root")
    page.goto(site.web.url + f"/messages/{refused}")
    expect(page.locator("ul.why")).to_contain_text("By @casino.example on the global block list")
    expect(page.locator("ul.why")).not_to_contain_text("Your own lists come first")  # not root's address


def test_an_admin_changes_a_users_role_and_it_applies_at_once(site: Site, page: Page) -> None:
    """There was no way to make someone an administrator (or take it back) but deleting and
    creating them again, which deleted their lists and hid their past mail from them."""
    bob = page.context.browser.new_context().new_page()  # type: ignore[union-attr]
    login(bob, site.web.url, "bob")
    login(page, site.web.url, "root")
    page.goto(site.web.url + "/admin/users")
    expect(page.locator("#user-root").get_by_role("button", name=re.compile("^Make"))).to_have_count(0)
    page.get_by_role("button", name="Make bob an administrator").click()
    expect(page.locator(".flashes")).to_contain_text("User bob is now an administrator.")
    expect(page.locator("#user-bob")).to_contain_text("admin")
    bob.goto(site.web.url + "/admin/users")  # the same session: no new login needed
    expect(bob.get_by_role("heading", name="Users")).to_be_visible()
    page.get_by_role("button", name="Make bob a plain user").click()
    expect(page.locator(".flashes")).to_contain_text("User bob is now a plain user.")
    assert bob.goto(site.web.url + "/admin/users").status == 403  # type: ignore[union-attr]
    expect(bob.get_by_role("navigation")).not_to_contain_text("Users")
    with site.store.session() as s:
        kept = accounts.get_user(s, "bob")
        assert kept is not None and accounts.owned_addresses(kept) == ["bob@example.com"]
    bob.context.close()


def test_a_wrong_password_keeps_the_login_typed(site: Site, page: Page) -> None:
    """Only the password is typed again (the login field came back empty)."""
    login(page, site.web.url, "alice", "not her password")
    expect(page.locator("p.error")).to_contain_text("Wrong login or password.")
    expect(page.get_by_label("Login")).to_have_value("alice")
    expect(page.get_by_label("Password")).to_be_focused()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out alice")).to_be_visible()


def test_recent_mail_offers_an_older_page_only_when_there_is_one(site: Site, page: Page) -> None:
    """Exactly one page of mail (50) showed 'Older', which led to an empty page."""
    with site.store.session() as s:
        dora = accounts.add_user(s, "dora", PASSWORD)
        accounts.assign_address(s, dora, "dora@example.com")
    for i in range(50):
        site.receive("dora@example.com", f"Note {i}")
    login(page, site.web.url, "dora")
    page.goto(site.web.url + "/messages/")
    expect(page.locator("table.log tbody tr")).to_have_count(50)
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    site.receive("dora@example.com", "Note 50")
    page.reload()
    page.get_by_role("link", name="Older").click()
    expect(page.locator("table.log tbody tr")).to_have_count(1)
    expect(page.locator("table.log tbody")).to_contain_text("Note 0")
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    expect(page.get_by_role("link", name="Newer")).to_be_visible()


def test_a_right_to_left_subject_reads_right_to_left(site: Site, page: Page) -> None:
    """A Hebrew or Arabic subject took the page's left-to-right direction: 'שלום!' showed its
    '!' at the wrong end. Subjects now take their own direction (dir=auto) wherever shown alone."""
    mid = site.receive("alice@example.com", "שלום לכולם!", held=True)
    direction = "el => getComputedStyle(el).direction"
    login(page, site.web.url, "alice")
    page.goto(site.web.url + "/messages/")
    link = page.get_by_role("link", name="שלום לכולם!")
    assert link.evaluate(direction) == "rtl"
    assert page.get_by_role("link", name="Recent mail").evaluate(direction) == "ltr"
    page.goto(site.web.url + f"/messages/{mid}")
    assert page.get_by_role("heading", name="שלום לכולם!").evaluate(direction) == "rtl"
    page.goto(site.web.url + "/junk/")
    page.get_by_role("link", name="שלום לכולם!").click()
    assert page.get_by_role("heading", name="שלום לכולם!").evaluate(direction) == "rtl"
    screenshot(page, "junk-item-rtl")
