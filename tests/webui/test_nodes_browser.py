"""Several web nodes on one PostgreSQL, in real Chromium: a login, a form and a digest link made by one
node work on every other (a proxy may send each request to any of them).

Two ``stronghold web`` processes, each with its own data_dir, share the database; both listen on
127.0.0.1, where the browser's cookie goes to either port, as behind a proxy.  The digest is sent by
``stronghold digest`` run with a third node's settings, as cron on a mail node does."""

from __future__ import annotations

import email
import os
import re
import shutil
from collections.abc import Iterator
from email.policy import default

import pytest
from playwright.sync_api import Browser, Page, expect

from stronghold.cli import main
from stronghold.store import entries, quarantine
from stronghold.store.db import Store
from tests.conftest import shared_tmpdir
from tests.harness.browser import WebProcess, screenshot
from tests.harness.milterproc import write_config
from tests.harness.postgres import PostgresCluster
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import login, seed

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


@pytest.fixture(scope="module")
def nodes(postgres: PostgresCluster, module_sink: SmtpSink) -> Iterator[tuple[Store, WebProcess, WebProcess, dict]]:
    """(the shared store, web node A, web node B, the settings of a third node without a web UI)."""
    home = shared_tmpdir("stronghold-webnodes-")
    url = postgres.create_database(f"webnodes_{os.getpid()}")
    store = Store(url)
    store.upgrade()
    seed(store)
    base = {"database_url": url, "release_smtp": f"127.0.0.1:{module_sink.port}", "digest_check_minutes": 0}
    webs = []
    for name in ("a", "b"):
        (home / name).mkdir()
        webs.append(WebProcess(home / name, {**base, "data_dir": str(home / name / "data")}))
    for web in webs:  # the digest's links point at the proxy: here, node B
        write_config(web.config, {**base, "data_dir": str(web.home / "data"), "web_bind": f"127.0.0.1:{web.port}",
                                  "web_base_url": webs[1].url})
        web.start()
    mail_node = {**base, "data_dir": str(home / "mx" / "data"), "web_base_url": webs[1].url}
    yield store, webs[0], webs[1], mail_node
    for web in webs:
        web.stop()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)


def test_a_login_a_form_and_a_digest_link_work_on_every_web_node(
        nodes: tuple[Store, WebProcess, WebProcess, dict], page: Page, sink: SmtpSink, tmp_path) -> None:
    store, web_a, web_b, mail_node = nodes
    login(page, web_a.url, "alice")
    expect(page.get_by_role("button", name="Log out alice")).to_be_visible()
    page.goto(web_b.url + "/lists/alice@example.com")  # the proxy sends the next request to node B
    expect(page.get_by_role("button", name="Log out alice")).to_be_visible()
    page.locator("#pattern-block").fill("offers@pushy.example")
    page.get_by_role("button", name="Add to block list").click()  # a form and its CSRF token, on node B
    expect(page.get_by_role("button", name="Remove offers@pushy.example")).to_be_visible()
    with store.session() as s:
        assert [e.pattern for e in entries.entries(s, "alice@example.com")] == ["offers@pushy.example"]
    page.goto(web_a.url + "/junk/")  # and back to node A
    expect(page.get_by_role("heading", name="Junk")).to_be_visible()

    with store.session() as s:
        [item] = quarantine.hold(s, b"From: shop@store.example\r\nSubject: Your receipt\r\n\r\nThanks.\r\n",
                                 recipients=["alice@example.com"], sender="shop@store.example",
                                 subject="Your receipt", queue_id="QN", score=0.995, category="spam",
                                 reason="score", trace="", virus=None)
    config = write_config(tmp_path / "mx.toml", mail_node)
    assert main(["--config", str(config), "digest", "--user", "alice"]) == 0
    [sent] = [m for m in sink.messages if b"X-Stronghold-Digest:" in m.data]
    text = email.message_from_bytes(sent.data, policy=default).get_body(("plain",)).get_content()
    [link] = re.findall(r"release: (\S+/digest/release/\S+)", text)
    assert link.startswith(web_b.url)
    page.goto(link)
    expect(page.get_by_role("heading", name="Release this message?")).to_be_visible()
    screenshot(page, "nodes-digest-confirm")
    page.get_by_role("button", name="Release to my inbox").click()
    expect(page.get_by_role("heading", name="Released")).to_be_visible()
    released = sink.wait_for(lambda m: m.recipients == ["alice@example.com"] and b"X-Stronghold-Released" in m.data)
    assert len(released) == 1
    with store.session() as s:
        assert quarantine.get(s, item).released is not None  # type: ignore[union-attr]


def test_a_message_deleted_in_one_tab_is_a_note_in_the_other(
        nodes: tuple[Store, WebProcess, WebProcess, dict], browser: Browser, sink: SmtpSink) -> None:
    """Two tabs (here on two web nodes) show one held message; one deletes it, then the other's
    Release button lands on the Junk page saying nothing was done (before: "Not found")."""
    store, web_a, web_b, _ = nodes
    with store.session() as s:
        [item] = quarantine.hold(s, b"From: deals@pushy.example\r\nSubject: Flash sale\r\n\r\nBuy.\r\n",
                                 recipients=["alice@example.com"], sender="deals@pushy.example",
                                 subject="Flash sale", queue_id="QT", score=0.995, category="spam",
                                 reason="score", trace="", virus=None)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    first, second = context.new_page(), context.new_page()
    login(first, web_a.url, "alice")
    first.goto(f"{web_a.url}/junk/{item}")
    second.goto(f"{web_b.url}/junk/{item}")
    second.get_by_role("button", name="Delete").click()
    second.get_by_role("button", name="Delete").click()  # the confirmation page's
    expect(second.locator(".flashes")).to_contain_text("Deleted")
    first.get_by_role("button", name="Release to inbox").click()
    expect(first.get_by_role("heading", name="Junk")).to_be_visible()
    expect(first.locator(".flashes")).to_contain_text("no longer in your quarantine")
    expect(first.locator(".flashes")).to_contain_text("Nothing was done")
    screenshot(first, "nodes-junk-gone")
    context.close()
    assert not sink.wait_for(lambda m: b"Flash sale" in m.data, timeout=1)
