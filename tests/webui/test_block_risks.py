"""A block entry that refuses far more than one sender (the site's own domains, the owner's own
address, a whole public suffix) is added only once its owner confirms it (stronghold.blockrisk)."""

from __future__ import annotations

import io

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stronghold.blockrisk import risks
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import entries, messagelog
from stronghold.verdict import Envelope
from tests.webui.conftest import Auth, token

ASKS = "Block anyway"


def _blocked(app: Flask, owner: str | None) -> list[str]:
    with app.extensions["stronghold_store"].session() as s:
        return [e.pattern for e in entries.entries(s, owner, "block")]


@pytest.mark.parametrize("login, owner, pattern, said", [
    ("alice", "alice@example.com", "alice@example.com", "matches your own address alice@example.com"),
    ("alice", "alice@example.com", "ALICE2@example.com", "matches your own address alice2@example.com"),
    ("alice", "alice@example.com", "@example.com", "matches a domain this site hosts (example.com)"),
    ("root", "global", "*.example.com", "matches a domain this site hosts (example.com)"),
    ("root", "global", "bob@example.com", "is the address of a user of this site"),
    ("root", "global", "*.co.uk", "covers every domain registered under co.uk, a public suffix"),
    ("root", "bob@example.com", "bob@example.com", "matches the address whose list this is, bob@example.com"),
])
def test_a_wide_block_asks_first_and_adds_on_confirmation(client: FlaskClient, auth: Auth, app: Flask, login: str,
                                                         owner: str, pattern: str, said: str) -> None:
    auth.login(login)
    form = {"kind": "block", "pattern": pattern, "comment": "spoofed"}
    page = auth.post(f"/lists/{owner}/add", form)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and ASKS in text and said in text
    store_owner = None if owner == "global" else owner
    assert _blocked(app, store_owner) == []
    done = auth.post(f"/lists/{owner}/add", {**form, "confirm": "1"})
    assert done.status_code == 302
    assert _blocked(app, store_owner) == [pattern.lower()]


@pytest.mark.parametrize("login, owner, pattern", [("alice", "alice@example.com", "spammer@bad.example"),
                                                   ("alice", "alice@example.com", "bob@example.com"),
                                                   ("root", "global", "*.bad.co.uk"),
                                                   ("root", "global", "@bad.example")])
def test_an_ordinary_block_is_added_at_once(client: FlaskClient, auth: Auth, app: Flask, login: str, owner: str,
                                            pattern: str) -> None:
    auth.login(login)
    page = auth.post(f"/lists/{owner}/add", {"kind": "block", "pattern": pattern})
    assert page.status_code == 302 and ASKS not in page.get_data(as_text=True)
    assert _blocked(app, None if owner == "global" else owner) == [pattern]


def test_an_import_refuses_a_wide_block_line(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("root")
    data = b"block,@bad.example\nblock,@example.com,oops\nallow,@example.com\n"
    page = auth.post("/lists/global/import", {"file": (io.BytesIO(data), "l.csv")}, "/lists/global")
    text = page.get_data(as_text=True)
    assert page.status_code == 400
    assert "line 2: @example.com matches a domain this site hosts (example.com)" in text
    assert "line 3" not in text  # allowing one's own domain is not this
    assert _blocked(app, None) == []


def test_blocking_a_forged_own_address_from_recent_mail_asks_first(client: FlaskClient, auth: Auth,
                                                                   app: Flask) -> None:
    raw = b"From: alice@example.com\r\nSubject: your account\r\n\r\npay now"
    env = Envelope("x@bad.example", ("alice@example.com",), queue_id="Q8")
    verdict = decide(env, parse(raw), Findings(lists=ListIndex([])), Policy())
    with app.extensions["stronghold_store"].session() as s:
        mid = messagelog.record(s, env, parse(raw), verdict, {"tok"})
    auth.login("alice")
    page = auth.post(f"/messages/{mid}/list", {"kind": "block", "target": "address"}, "/messages/")
    assert page.status_code == 200 and "matches your own address alice@example.com" in page.get_data(as_text=True)
    assert _blocked(app, "alice@example.com") == []
    asked = f"http://localhost/messages/{mid}/list"  # the confirmation page came from here
    done = client.post(f"/messages/{mid}/list", headers={"Referer": asked}, data={
        "kind": "block", "target": "address", "confirm": "1", "csrf_token": token(client, "/messages/")})
    assert done.status_code == 302 and done.headers["Location"] == f"/messages/{mid}"
    assert _blocked(app, "alice@example.com") == ["alice@example.com"]


def test_risks_read_idn_and_subdomains() -> None:
    hosted = ["xn--bcher-kva.example", "mail.example.org"]
    assert risks("*.example.org", hosted) and not risks("@example.org", hosted)  # the apex is not hosted
    assert "bücher.example" in risks("@xn--bcher-kva.example", hosted)[0]
    assert risks("*.github.io", hosted) and not risks("*.me.github.io", hosted)


def test_a_get_of_an_add_address_goes_back_to_the_form(client: FlaskClient, auth: Auth, app: Flask) -> None:
    """A reload of the confirmation page, the back button or a login that lands on the address the
    "Block anyway" button posts to asks for it with a GET: the list's (or message's) page, not a 405."""
    raw = b"From: alice@example.com\r\nSubject: your account\r\n\r\npay now"
    env = Envelope("x@bad.example", ("alice@example.com",), queue_id="Q9")
    verdict = decide(env, parse(raw), Findings(lists=ListIndex([])), Policy())
    with app.extensions["stronghold_store"].session() as s:
        mid = messagelog.record(s, env, parse(raw), verdict, {"tok"})
    logged_out = client.get("/lists/alice@example.com/add")
    assert logged_out.status_code == 302
    assert "/login?next=/lists/alice@example.com/add" in logged_out.headers["Location"]
    auth.login("alice")
    got = client.get("/lists/alice@example.com/add")
    assert got.status_code == 302 and got.headers["Location"] == "/lists/alice@example.com#h-block"
    got = client.get(f"/messages/{mid}/list")
    assert got.status_code == 302 and got.headers["Location"] == f"/messages/{mid}"
    assert client.get("/lists/bob@example.com/add").status_code == 404  # not hers: as its page
    assert _blocked(app, "alice@example.com") == []  # a GET adds nothing


def test_one_risk_check_for_the_web_and_the_command_line(app: Flask) -> None:
    """blockrisk.for_list reads the site for both: a user's own list counts all their addresses, an
    admin (or the command line) at a list names its address, the global list the users' addresses."""
    import inspect

    from stronghold import blockrisk, cli_admin
    from webui import lists
    with app.extensions["stronghold_store"].session() as s:
        mine = blockrisk.for_list(s, "alice@example.com", ["alice@example.com", "alice2@example.com"])
        theirs = blockrisk.for_list(s, "alice@example.com")
        everyone = blockrisk.for_list(s, None)
    assert "matches your own address alice2@example.com" in mine("alice2@example.com")[0]
    assert theirs("alice2@example.com") == []  # another user's address is an ordinary entry on her list
    assert "the address whose list this is, alice@example.com" in theirs("alice@example.com")[0]
    assert "is the address of a user of this site" in everyone("bob@example.com")[0]
    assert blockrisk.of_pattern(everyone, " *.EXAMPLE.com") == ("*.example.com", everyone("*.example.com"))
    for module in (lists, cli_admin):  # neither reads the site's domains on its own any more
        assert "local_domains" not in inspect.getsource(module)
