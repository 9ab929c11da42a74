"""The web UI in a real browser: headless Chromium, Playwright, `stronghold web` behind waitress."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from stronghold.classifier import Clue, Score
from stronghold.findings import Findings
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import accounts, entries, messagelog
from stronghold.store.db import Store
from stronghold.tokens import features
from stronghold.verdict import Action, Envelope
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.webui.conftest import login, seed

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[WebProcess, Store]]:
    home = shared_tmpdir("stronghold-web-")
    url = f"sqlite:///{home / 'store.db'}"
    store = Store(url)
    store.upgrade()
    seed(store)
    web = WebProcess(home, {"data_dir": str(home / "data"), "database_url": url}).start()
    yield web, store
    web.stop()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)




def test_lists_add_remove_and_errors(site: tuple[WebProcess, Store], page: Page) -> None:
    web, store = site
    login(page, web.url, "alice")
    page.goto(web.url + "/lists/alice@example.com")
    page.locator("#pattern-block").fill("*.bad-actors.example")
    page.locator("#comment-block").fill("phishing campaign")
    page.get_by_role("button", name="Add to block list").click()
    expect(page.locator("#list-block")).to_contain_text("*.bad-actors.example")
    page.locator("#pattern-allow").fill("*.bad-actors.example")
    page.get_by_role("button", name="Add to allow list").click()
    expect(page.locator("#err-allow")).to_contain_text("remove it there first")
    page.locator("#pattern-allow").fill("grandma@family.example")
    page.get_by_role("button", name="Add to allow list").click()
    expect(page.locator("#list-allow")).to_contain_text("grandma@family.example")
    screenshot(page, "lists")
    page.get_by_role("button", name="Remove *.bad-actors.example").click()
    expect(page.get_by_role("heading")).to_contain_text("Remove *.bad-actors.example?")
    screenshot(page, "confirm-remove")
    page.get_by_role("button", name="Remove").click()
    expect(page.locator("#list-block")).not_to_contain_text("*.bad-actors.example")
    with store.session() as s:
        assert [e.pattern for e in entries.entries(s, "alice@example.com")] == ["grandma@family.example"]


def test_import_csv(site: tuple[WebProcess, Store], page: Page, tmp_path: Path) -> None:
    web, store = site
    csv_file = tmp_path / "entries.csv"
    csv_file.write_text("kind,pattern,comment\nblock,@spam-house.example,bulk\nallow,boss@work.example,\n"
                        "block,bad pattern,\n")
    login(page, web.url, "alice")
    page.goto(web.url + "/lists/alice2@example.com")
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    page.get_by_role("button", name="Import").click()
    expect(page.locator(".problems")).to_contain_text("line 4")
    expect(page.locator(".import .error")).to_contain_text("Nothing was imported")
    with store.session() as s:
        assert entries.entries(s, "alice2@example.com") == []  # all or nothing
    csv_file.write_text("kind,pattern,comment\nblock,@spam-house.example,bulk\nallow,boss@work.example,\n")
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    page.get_by_role("button", name="Import").click()
    expect(page.locator(".flashes")).to_contain_text("Imported 2 entries")
    assert page.url.endswith("/lists/alice2@example.com")  # redirected: a reload does not post again
    with store.session() as s:
        assert {e.pattern for e in entries.entries(s, "alice2@example.com")} == {"@spam-house.example",
                                                                                 "boss@work.example"}


def test_import_past_the_size_of_one_addresss_lists_is_refused(site: tuple[WebProcess, Store], page: Page,
                                                                tmp_path: Path) -> None:
    """The page says why nothing was imported when a file would take an address's lists past
    entries.MAX_OWNER_ENTRIES (every milter worker holds every entry)."""
    web, store = site
    cap = entries.MAX_OWNER_ENTRIES
    with store.session() as s:
        accounts.assign_address(s, accounts.get_user(s, "alice"), "alice-big@example.com")
        entries.import_csv(s, "alice-big@example.com", "".join(f"block,x{i}@spam.example\n" for i in range(cap - 1)))
    csv_file = tmp_path / "more.csv"
    csv_file.write_text("block,one@more.example\nblock,two@more.example\n")
    login(page, web.url, "alice")
    page.goto(web.url + "/lists/alice-big@example.com")
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    with page.expect_navigation(timeout=30_000):  # a page of 9,999 entries: wait for it, not the old one
        page.get_by_role("button", name="Import").click()
    expect(page.locator(".import .error")).to_contain_text(
        f"Nothing was imported: the lists of alice-big@example.com hold {cap - 1:,} entries and one address "
        f"may have at most {cap:,}: remove some first (this adds 2).")
    with store.session() as s:
        assert len(entries.entries(s, "alice-big@example.com")) == cap - 1


def test_mark_message_as_spam(site: tuple[WebProcess, Store], page: Page) -> None:
    web, store = site
    msg = parse(b"From: promo@deals.example\r\nSubject: Cheap watches today\r\n\r\nbuy")
    env = Envelope("promo@deals.example", ("bob@example.com",), queue_id="ABC123")
    verdict = decide(env, msg, Findings(lists=ListIndex([])), Policy())
    with store.session() as s:
        mid = messagelog.record(s, env, msg, verdict, {"tok"})
    login(page, web.url, "bob")
    page.goto(web.url + "/messages/")
    page.get_by_role("button", name="This is spam: Cheap watches today").click()
    expect(page.locator(".flashes")).to_contain_text("marked as spam")
    expect(page.locator(".fb").first).to_contain_text("not taken in yet")
    screenshot(page, "messages")
    with store.session() as s:
        assert [(fb.message_id, fb.is_spam) for fb, _ in messagelog.pending(s)] == [(mid, True)]


def test_admin_resets_password_and_user_logs_in(site: tuple[WebProcess, Store], page: Page,
                                                browser: Browser) -> None:
    web, _ = site
    login(page, web.url, "root")
    page.goto(web.url + "/admin/users")
    page.get_by_label("New password for bob").fill("fresh password 42")
    page.locator("#user-bob").get_by_role("button", name="Reset password").click()
    expect(page.locator(".flashes")).to_contain_text("bob has a new password")
    screenshot(page, "admin-users")
    other = browser.new_context().new_page()
    login(other, web.url, "bob", "fresh password 42")
    expect(other.get_by_role("heading", name="Last 30 days")).to_be_visible()
    screenshot(other, "dashboard")
    other.context.close()


def test_works_on_a_phone_sized_screen(site: tuple[WebProcess, Store], browser: Browser) -> None:
    web, _ = site
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login(page, web.url, "alice")
    page.goto(web.url + "/lists/alice@example.com")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400  # no sideways scrolling
    screenshot(page, "lists-phone")
    context.close()


def _seed_long_values(store: Store) -> int:
    """Entries and a message with the long values that pushed pages sideways."""
    with store.session() as s:
        entries.add_entry(s, "alice@example.com", "allow", "*.trusted.example", "x" * 190)
        entries.add_entry(s, "alice@example.com", "block", "@" + "very-long-label-" * 3 + "x.example",
                          "a comment written without spaces: " + "overlongword" * 13)
        entries.add_entry(s, None, "block", "*.bücher.example", "IDN shown as the reader writes it")
    msg = parse(("From: \"A newsletter with a very long display name\" <news-" + "x" * 55
                 + "@mailer.newsletters.example>\r\nSubject: " + "Unbroken" * 20
                 + "\r\n\r\nbody").encode())
    env = Envelope("bounce-" + "y" * 56 + "@bounces.newsletters.example", ("alice@example.com",),
                   queue_id="LONG1")
    verdict = decide(env, msg, Findings(lists=ListIndex([])), Policy())
    with store.session() as s:
        return messagelog.record(s, env, msg, verdict, None)


def test_every_page_fits_a_phone(site: tuple[WebProcess, Store], browser: Browser) -> None:
    """390 px wide (a phone): no page scrolls sideways; chart labels stay readable; screenshots kept."""
    web, store = site
    mid = _seed_long_values(store)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    pages = {"login": "/login"}
    wide: dict[str, int] = {}
    for name, url in pages.items():
        page.goto(web.url + url)
        wide[name] = page.evaluate("document.documentElement.scrollWidth")
        screenshot(page, f"phone-{name}")
    login(page, web.url, "alice")
    for name, url in {"dashboard": "/", "messages": "/messages/", "message": f"/messages/{mid}",
                      "lists": "/lists/alice@example.com", "password": "/password", "settings": "/settings/",
                      "junk": "/junk/",
                      "not-found": "/nothing-here"}.items():
        page.goto(web.url + url)
        wide[name] = page.evaluate("document.documentElement.scrollWidth")
        screenshot(page, f"phone-{name}")
        if name == "dashboard":
            tick = page.locator("svg text.tick").first.bounding_box()
            wide["axis label height >= 9"] = 390 if tick and tick["height"] >= 9 else int(tick["height"] if tick else 0)
    page.get_by_role("button", name="Log out alice").click()
    login(page, web.url, "root")
    for name, url in {"admin-users": "/admin/users", "global-lists": "/lists/global",
                      "all-mail": "/messages/?all=1"}.items():
        page.goto(web.url + url)
        wide[name] = page.evaluate("document.documentElement.scrollWidth")
        screenshot(page, f"phone-{name}")
    page.goto(web.url + "/admin/users")
    page.get_by_role("button", name="Delete user bob").click()
    expect(page.get_by_role("heading", name="Delete user bob?")).to_be_visible()
    wide["confirm"] = page.evaluate("document.documentElement.scrollWidth")
    screenshot(page, "phone-confirm")
    context.close()
    assert wide == dict.fromkeys(wide, 390)


def test_long_values_stay_in_their_card_on_a_desktop(site: tuple[WebProcess, Store], page: Page) -> None:
    web, store = site
    with store.session() as s:
        if not entries.entries(s, "alice@example.com", "allow", "trusted"):
            _seed_long_values(store)
    login(page, web.url, "alice")
    page.goto(web.url + "/lists/alice@example.com")
    assert page.evaluate("document.documentElement.scrollWidth") == 1200
    for kind in ("allow", "block"):
        card = page.locator(f"section[aria-labelledby=h-{kind}]").bounding_box()
        table = page.locator(f"#list-{kind}").bounding_box()
        assert card and table and table["x"] + table["width"] <= card["x"] + card["width"]
    # a short pattern beside a long comment keeps to one line (it wrapped as *.trust|ed.exam|ple)
    cell = page.locator("#list-allow td.pattern", has_text="trusted").first
    lines = cell.evaluate("e => { const r = document.createRange(); r.selectNodeContents(e);"
                          " return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size }")
    assert lines == 1
    screenshot(page, "desktop-lists")


def test_a_global_block_of_the_sites_own_domain_asks_first(site: tuple[WebProcess, Store], page: Page) -> None:
    """An admin blocking @example.com (the domain this site's users are at) gets a page saying what it
    would refuse; Cancel adds nothing, "Block anyway" adds it."""
    web, store = site
    login(page, web.url, "root")
    page.goto(web.url + "/lists/global")
    for attempt in ("cancel", "confirm"):
        page.locator("#pattern-block").fill("@Example.com")
        page.get_by_role("button", name="Add to block list").click()
        expect(page.get_by_role("heading", name="Block @example.com?")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("matches a domain this site hosts (example.com)")
        with store.session() as s:
            assert "@example.com" not in [e.pattern for e in entries.entries(s, None, "block")]
        if attempt == "cancel":
            page.get_by_role("link", name="Cancel").click()
            expect(page.get_by_role("heading", name="Global lists")).to_be_visible()
            expect(page.locator("#list-block")).not_to_contain_text("@example.com")
    screenshot(page, "block-own-domain")
    page.get_by_role("button", name="Block anyway").click()
    expect(page.locator("#list-block")).to_contain_text("@example.com")
    with store.session() as s:
        [added] = [e for e in entries.entries(s, None, "block") if e.pattern == "@example.com"]
        entries.remove_entry(s, added.id, [None])  # the other tests' mail is not refused


def test_each_clue_is_one_item_even_when_its_token_holds_spaces(site: tuple[WebProcess, Store],
                                                                 page: Page) -> None:
    """A header-value token ("x-mailer:microsoft cdo for windows 2000", as the tokenizer makes it) is
    one clue, not five; a recipient refused at RCPT (its row keeps "sender blocked") lists no clues."""
    web, store = site
    msg = parse(b"From: promo@cdo.example\r\nX-Mailer: Microsoft CDO for Windows 2000\r\n"
                b"Subject: Lose 10-12 lbs\r\n\r\nguaranteed")
    mailer = next(t for t in features(msg) if t.startswith("x-mailer:") and " " in t)
    score = Score(0.9998, (Clue(mailer, 0.999), Clue("10-12", 0.992), Clue("subject:lose", 0.992)))
    env = Envelope("promo@cdo.example", ("alice@example.com",), queue_id="CLUES1")
    verdict = decide(env, msg, Findings(lists=ListIndex([]), score=score, model_threshold=0.9), Policy())
    refused = messagelog.rcpt_reject_entry(Envelope("spammer@bad.example", (), queue_id="CLUES2"),
                                           "alice@example.com", "sender blocked", "block=rcpt(#1)")
    with store.session() as s:
        mid = messagelog.record(s, env, msg, verdict, None)
        [blocked] = messagelog.write(s, [refused])
    login(page, web.url, "alice")  # bob's password is reset by an earlier test
    page.goto(f"{web.url}/messages/{mid}")
    expect(page.locator("ul.clues li")).to_have_text([
        "x-mailer:microsoft cdo for windows 2000:0.999", "10-12:0.992", "subject:lose:0.992"])
    page.goto(f"{web.url}/messages/{blocked}")
    expect(page.locator("ul.why")).to_contain_text("sender blocked")
    expect(page.locator("ul.clues")).to_have_count(0)


def test_no_page_makes_the_browser_report_an_error(site: tuple[WebProcess, Store], page: Page) -> None:
    """No console error and no failed request on any page, the user's and the admin's: the browser's
    own request for an icon got a 404 on every page (a console error in its developer tools)."""
    web, _ = site
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(web.url + "/login")
    login(page, web.url, "alice")
    for url in ("/", "/messages/", "/lists/alice@example.com", "/junk/", "/settings/", "/password"):
        page.goto(web.url + url)
        page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Log out alice").click()
    login(page, web.url, "root")
    for url in ("/admin/users", "/lists/global", "/messages/?all=1", "/junk/"):
        page.goto(web.url + url)
        page.wait_for_load_state("networkidle")
    assert errors == []
    icon = page.request.get(web.url + "/favicon.ico")
    assert icon.ok and icon.headers["content-type"].startswith("image/svg+xml") and icon.body().startswith(b"<svg")


def test_recent_mail_shows_what_was_decided_for_the_viewer(site: tuple[WebProcess, Store], page: Page) -> None:
    """Another recipient allows the sender, so the message is "allowed"; Alice's copy was spam, held:
    her Recent mail, its spam filter and the message page say spam, the admin's view of all mail the
    message's verdict (her page said "allowed — accept" for mail held in her Junk)."""
    web, store = site
    msg = parse(b"From: rates@lender.example\r\nSubject: Rates hit a low\r\n\r\nlow rates")
    env = Envelope("rates@lender.example", ("alice@example.com", "carol@example.com"), queue_id="VIEW1")
    lists = ListIndex([ListEntry(1, "carol@example.com", "allow", "rates@lender.example", trust_unauthenticated=True)])
    verdict = decide(env, msg, Findings(lists=lists, score=Score(0.9995, ()), model_threshold=0.9),
                     Policy(spam_action=Action.QUARANTINE, spam_action_high=Action.QUARANTINE))
    with store.session() as s:
        mid = messagelog.record(s, env, msg, verdict, None)
    login(page, web.url, "alice")
    page.goto(web.url + "/messages/?category=spam")
    row = page.locator("table.log tbody tr", has_text="Rates hit a low")
    expect(row.locator("td").nth(3)).to_have_text("spam quarantine")
    page.goto(web.url + "/messages/?category=allowed")
    expect(page.locator("table.log")).not_to_contain_text("Rates hit a low")
    page.goto(f"{web.url}/messages/{mid}")
    expect(page.locator("dl.facts")).to_contain_text("spam — quarantine")
    page.get_by_role("button", name="Log out alice").click()
    login(page, web.url, "root")
    page.goto(web.url + "/messages/?all=1&category=allowed")
    expect(page.locator("table.log tbody tr", has_text="Rates hit a low").locator("td").nth(3)).to_have_text(
        "allowed accept")
