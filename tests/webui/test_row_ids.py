"""Ids in URLs: any number a URL can carry is a 404 when no row has it, never a server error."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import UnicodeConverter

from tests.webui.conftest import Auth, token
from webui import MAX_ROW_ID, RowId

HUGE = "99999999999999999999999"


def _int_routes(app: Flask) -> list[tuple[str, str]]:
    """(method, URL with every int argument HUGE and every other one "global") for each id route."""
    found = []
    for rule in app.url_map.iter_rules():
        if "<int:" not in rule.rule:
            continue
        url = re.sub(r"<[^>]+>", "global", re.sub(r"<int:\w+>", HUGE, rule.rule))
        found += [(method, url) for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]
    return found


def test_every_id_route_is_covered(app: Flask) -> None:
    routes = _int_routes(app)
    assert len(routes) >= 12 and ("GET", f"/messages/{HUGE}") in routes and ("GET", f"/junk/{HUGE}") in routes
    assert ("POST", f"/lists/global/remove/{HUGE}") in routes and ("POST", f"/admin/users/{HUGE}") in routes
    id_converters = [c for rule in app.url_map.iter_rules() if "<int:" in rule.rule
                     for c in rule._converters.values() if not isinstance(c, UnicodeConverter)]
    assert id_converters and all(isinstance(c, RowId) for c in id_converters)


def test_huge_ids_are_not_found_on_every_route(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login("root")  # an admin reaches every route, the global lists included
    csrf = token(client, "/lists/global")
    for method, url in _int_routes(app):
        response = client.open(url, method=method, data={"csrf_token": csrf, "confirm": "1", "kind": "block",
                                                        "is_spam": "1", "action": "enable"})
        assert response.status_code == 404, (method, url, response.status_code)
        assert "There is nothing here" in response.get_data(as_text=True)


@pytest.mark.parametrize("number", [MAX_ROW_ID, MAX_ROW_ID + 1, 10 ** 40])
def test_ids_at_and_past_the_largest_row_id(client: FlaskClient, auth: Auth, number: int) -> None:
    auth.login()
    assert client.get(f"/messages/{number}").status_code == 404
    assert client.get(f"/junk/{number}").status_code == 404
    assert auth.post(f"/messages/{number}/feedback", {"is_spam": "1"}).status_code == 404
    # a held message's form whose message is gone ends on the Junk page with a note; past the range, 404
    assert auth.post(f"/junk/{number}/delete", {}).status_code == (302 if number <= MAX_ROW_ID else 404)
    assert auth.post(f"/lists/alice@example.com/remove/{number}", {"confirm": "1"}).status_code == 404
