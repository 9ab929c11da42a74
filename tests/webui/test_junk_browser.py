"""The Junk page in real Chromium: preview, release, a hostile message kept inert, a phone-sized screen."""

from __future__ import annotations

import shutil
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, Page, expect

from stronghold import config as config_mod
from stronghold import digest
from stronghold.classifier import Score
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import accounts, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.verdict import Action, Envelope
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.harness.milterproc import write_config
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import PASSWORD, login, seed
from tests.webui.hostile import hostile

pytestmark = pytest.mark.browser


class _Count(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.hits.append(self.request.recv(4096))  # type: ignore[attr-defined]


class RemoteHost(socketserver.ThreadingTCPServer):
    """Stands in for the spammer's server: counts every connection made to it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Count)
        self.hits: list[bytes] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@dataclass
class Site:
    web: WebProcess
    store: Store
    sink: SmtpSink
    remote: RemoteHost
    items: dict[str, int] = field(default_factory=dict)

    def hold(self, rcpt: str, subject: str, raw: bytes | None = None, sender: str = "news@shop.example",
             virus: str | None = None) -> int:
        raw = raw or (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
                      "Your order has shipped.\r\n").encode()
        with self.store.session() as s:
            return quarantine.hold(s, raw, recipients=[rcpt], sender=sender, subject=subject, queue_id="Q9",
                                   score=0.9991, category="virus" if virus else "spam",
                                   reason=virus or "score 0.9991 >= 0.99", trace="", virus=virus)[0]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = shared_tmpdir("stronghold-junkweb-")
    url = f"sqlite:///{home / 'store.db'}"
    store = Store(url)
    store.upgrade()
    seed(store)
    sink, remote = SmtpSink(), RemoteHost()
    settings = {"data_dir": str(home / "data"), "database_url": url, "release_smtp": f"127.0.0.1:{sink.port}",
                "digest_check_minutes": 0}  # no scheduled digests into the sink
    web = WebProcess(home, settings)
    write_config(web.config, {**settings, "web_bind": f"127.0.0.1:{web.port}", "web_base_url": web.url})
    web.start()
    yield Site(web, store, sink, remote)
    web.stop()
    sink.close()
    remote.shutdown()
    remote.server_close()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)




def test_user_opens_junk_previews_and_releases(site: Site, page: Page) -> None:
    item = site.hold("alice@example.com", "Your parcel is on its way")
    site.hold("bob@example.com", "Bob's own junk")
    login(page, site.web.url, "alice")
    page.get_by_role("navigation").get_by_role("link", name="Junk").click()
    expect(page.get_by_role("heading", name="Junk")).to_be_visible()
    expect(page.locator(f"#item-{item}")).to_contain_text("score 0.9991")
    expect(page.locator("table.junk")).not_to_contain_text("Bob's own junk")
    screenshot(page, "junk-list")
    page.get_by_role("link", name="Your parcel is on its way").click()
    expect(page.locator("#preview")).to_have_text("Your order has shipped.")
    screenshot(page, "junk-preview")
    page.get_by_role("button", name="Release to inbox").click()
    expect(page.locator(".flashes")).to_contain_text("on its way to alice@example.com")
    got = site.sink.wait_for(lambda m: m.recipients == ["alice@example.com"])
    assert [m.sender for m in got] == ["news@shop.example"]
    expect(page.locator("#held-facts")).to_contain_text("by alice")
    page.get_by_role("button", name="Release to inbox").click()  # a second click
    expect(page.locator(".flashes")).to_contain_text("Already released")
    assert len(site.sink.messages) == 1
    with site.store.session() as s:
        held = quarantine.get(s, item)
        assert held is not None and held.released_by == "alice"


def test_hostile_message_renders_inert(site: Site, page: Page) -> None:
    subject = "<script>alert('subject')</script>"  # as the milter stores it: decoded
    item = site.hold("alice@example.com", subject, raw=hostile(site.remote.url), sender="evil@bad.example")
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, site.web.url, "alice")
    page.goto(f"{site.web.url}/junk/{item}")
    page.wait_for_load_state("networkidle")
    assert site.remote.hits == []  # nothing reached the spammer's server
    assert [u for u in requests if not u.startswith(site.web.url)] == []
    assert page.evaluate("typeof window.pwned") == "undefined" and dialogs == []
    assert page.url == f"{site.web.url}/junk/{item}"  # no refresh, no base, no redirect
    assert page.locator("#preview a, #preview img, iframe, object, embed, svg").count() == 0
    expect(page.locator("#preview")).to_contain_text("Dear customer")
    expect(page.locator("#preview")).to_contain_text("Line one\nline two")
    expect(page.locator("h1.subject")).to_have_text(subject)
    expect(page.locator("dl.headers")).to_contain_text(subject)
    screenshot(page, "junk-hostile")


def test_digest_link_without_logging_in(site: Site, browser: Browser) -> None:
    item = site.hold("bob@example.com", "Order confirmation", sender="orders@shop.example")
    cfg = config_mod.load(site.web.config, environ={})
    link = digest.link_url(cfg, digest.make_link_token(cfg, item, "bob@example.com"))
    assert link.startswith(site.web.url + "/digest/release/")
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone, not logged in
    page = context.new_page()
    page.goto(link)
    expect(page.get_by_role("heading", name="Release this message?")).to_be_visible()
    expect(page.locator("#held-facts")).to_contain_text("Order confirmation")
    assert page.evaluate("document.documentElement.scrollWidth") == 390
    screenshot(page, "digest-confirm")
    before = len(site.sink.messages)
    page.get_by_role("button", name="Release to my inbox").click()
    expect(page.get_by_role("heading", name="Released")).to_be_visible()
    assert [m.recipients for m in site.sink.wait_for(lambda m: m.recipients == ["bob@example.com"])] == [
        ["bob@example.com"]]
    page.goto(link)  # the same link again
    expect(page.get_by_role("heading", name="Already released")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("will not be sent again")
    screenshot(page, "digest-used")
    assert len(site.sink.messages) == before + 1
    context.close()


def test_junk_fits_a_phone(site: Site, browser: Browser) -> None:
    item = site.hold("alice2@example.com", "A very long subject line " * 6,
                     sender="someone.with.a.remarkably.long.address@subdomain.marketing.example")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login(page, site.web.url, "alice")
    for path in ("/junk/", f"/junk/{item}"):
        page.goto(site.web.url + path)
        assert page.evaluate("document.documentElement.scrollWidth") == 390  # no sideways scrolling
        screenshot(page, "junk-phone" if path == "/junk/" else "junk-preview-phone")
    context.close()


def test_junk_and_recent_mail_name_the_same_sender(site: Site, page: Page) -> None:
    """The From people recognise first on both pages, the mailing service's envelope sender beneath
    it; "always allow" adds the From address and says so."""
    raw = b"From: Shop News <deals@shop.example>\r\nSubject: Weekend sale\r\n\r\nbuy now\r\n"
    env = Envelope("bounce-4711@mailer.example", ("alice@example.com",), queue_id="QS1")
    verdict = decide(env, parse(raw), Findings(lists=ListIndex([]), score=Score(0.999, ()), model_threshold=0.9),
                     Policy(spam_action=Action.QUARANTINE, spam_action_high=Action.QUARANTINE))
    with site.store.session() as s:
        messagelog.record(s, env, parse(raw), verdict, {"tok"})
        [item] = quarantine.hold_verdict(s, env, verdict, raw, "Weekend sale")
    login(page, site.web.url, "alice")
    page.goto(site.web.url + "/junk/")
    cell = page.locator(f"#item-{item} td[data-label=From]")
    expect(cell.locator(".from-header")).to_have_text("Shop News <deals@shop.example>")
    expect(cell.locator(".via")).to_have_text("envelope sender bounce-4711@mailer.example")
    below = cell.locator(".via").bounding_box()
    above = cell.locator(".from-header").bounding_box()
    assert below is not None and above is not None and below["y"] >= above["y"] + above["height"] - 1  # its own line
    page.get_by_role("navigation").get_by_role("link", name="Recent mail").click()
    row = page.locator("table.log tbody tr", has_text="Weekend sale")
    expect(row.locator(".from-header")).to_have_text("Shop News <deals@shop.example>")
    expect(row.locator(".via")).to_have_text("envelope sender bounce-4711@mailer.example")
    page.goto(f"{site.web.url}/junk/{item}")
    page.get_by_role("button", name="Release and always allow this sender").click()
    expect(page.locator(".flashes")).to_contain_text(
        "deals@shop.example (the From address) is now on the allow list of alice@example.com.")
    page.goto(site.web.url + "/lists/alice@example.com")
    expect(page.locator("#list-allow")).to_contain_text("deals@shop.example")
    expect(page.locator("#list-allow")).not_to_contain_text("mailer.example")


def test_admin_finds_and_releases_a_disabled_users_held_mail(site: Site, page: Page) -> None:
    with site.store.session() as s:
        carol = accounts.add_user(s, "carol", PASSWORD)
        accounts.assign_address(s, carol, "carol@example.com")
    item = site.hold("carol@example.com", "Carol's invoice", sender="billing@supplier.example")
    login(page, site.web.url, "root")
    page.goto(site.web.url + "/admin/users")
    page.locator("#user-carol").get_by_role("button", name="Disable").click()
    expect(page.locator(".flashes")).to_contain_text(
        "User carol disabled. 1 held message of theirs now shows only on the Junk page of administrators")
    page.locator("#user-carol").get_by_role("link", name="1 held message only administrators see").click()
    expect(page.get_by_role("heading", name="Junk — held mail only administrators see")).to_be_visible()
    row = page.locator(f"#item-{item}")
    expect(row).to_contain_text("user carol is disabled")
    assert page.locator("table.junk tbody tr").count() == 1  # the others' held mail has owners who see it
    screenshot(page, "junk-unattended")
    row.get_by_role("button", name="Release").click()
    expect(page.locator(".flashes")).to_contain_text("on its way to carol@example.com")
    expect(page.get_by_role("heading", name="Junk — held mail only administrators see")).to_be_visible()  # back there
    assert [m.recipients for m in site.sink.wait_for(lambda m: m.recipients == ["carol@example.com"])] == [
        ["carol@example.com"]]


def test_preview_page_makes_the_browser_report_no_error(site: Site, page: Page) -> None:
    """The strictest page (nothing may load on it) reports no console error either: the icon is at
    the address browsers ask for by default, which that policy does not block (a <link> would be)."""
    item = site.hold("alice@example.com", "Icon check")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    login(page, site.web.url, "alice")
    page.goto(f"{site.web.url}/junk/{item}")
    expect(page.locator("#preview")).to_have_text("Your order has shipped.")
    page.wait_for_load_state("networkidle")
    assert errors == []


def test_digest_link_names_the_sender_as_junk_does(site: Site, browser: Browser) -> None:
    """The release page a digest links to shows the From people recognise (the digest mail's "from:"),
    the envelope sender beneath it, as the Junk page does; it showed the envelope sender as "From"."""
    raw = b"From: Shop News <deals@shop.example>\r\nSubject: Spring sale\r\n\r\nbuy now\r\n"
    item = site.hold("bob@example.com", "Spring sale", raw=raw, sender="bounce-4712@mailer.example")
    cfg = config_mod.load(site.web.config, environ={})
    link = digest.link_url(cfg, digest.make_link_token(cfg, item, "bob@example.com"))
    page = browser.new_context().new_page()
    page.goto(link)
    facts = page.locator("#held-facts")
    expect(facts.locator(".from-header")).to_have_text("Shop News <deals@shop.example>")
    expect(facts.locator(".via")).to_have_text("envelope sender bounce-4712@mailer.example")
    page.get_by_role("button", name="Release to my inbox").click()
    expect(page.get_by_role("status").locator(".from-header")).to_have_text("Shop News <deals@shop.example>")
    page.context.close()
