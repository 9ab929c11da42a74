"""One held message, two web nodes (or two tabs) acting on it at once, on one PostgreSQL: delivered
once, and the one that came second is told what happened on the Junk page, not shown an error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from stronghold.store.db import Store
from tests.harness.smtpsink import SmtpSink
from tests.webui.conftest import Auth, token
from tests.webui.test_junk import flashes, hold, item
from webui import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("store", ["postgres"], indirect=True)]


@pytest.fixture
def app(releasing_app: Flask) -> Flask:
    return releasing_app


@pytest.fixture
def other_node(app: Flask, store: Store, sink: SmtpSink, tmp_path: Path) -> Iterator[Flask]:
    """A second web node on the same database, with a data_dir of its own."""
    node = create_app({"data_dir": tmp_path / "node-b", "database_url": store.url, "TESTING": True,
                       "release_smtp": f"127.0.0.1:{sink.port}"})
    yield node
    node.extensions["stronghold_store"].dispose()


def _logged_in(node: Flask, login: str = "alice") -> Auth:
    auth = Auth(node.test_client())
    assert auth.login(login).status_code == 302
    return auth


def _at_once(*posts: tuple[Auth, str]) -> list[TestResponse]:
    """POST each (client, url) with its own page's token, all released by one barrier."""
    ready = [(auth.client, url, token(auth.client, "/junk/")) for auth, url in posts]
    barrier = threading.Barrier(len(ready))
    responses: list[TestResponse | None] = [None] * len(ready)

    def post(n: int, client: FlaskClient, url: str, csrf: str) -> None:
        barrier.wait()
        responses[n] = client.post(url, data={"csrf_token": csrf, "confirm": "1"})

    threads = [threading.Thread(target=post, args=(n, *args)) for n, args in enumerate(ready)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


def test_two_nodes_releasing_one_message_at_once_deliver_it_once(app: Flask, other_node: Flask,
                                                                 sink: SmtpSink) -> None:
    for _round in range(3):
        mine = hold(app, "alice@example.com", "newsletter", sender="news@shop.example")
        a, b = _logged_in(app), _logged_in(other_node)
        responses = _at_once((a, f"/junk/{mine}/release"), (b, f"/junk/{mine}/release"))
        assert [r.status_code for r in responses] == [302, 302]
        pages = [flashes(a.client), flashes(b.client)]
        assert sum("Released" in p and "on its way" in p for p in pages) == 1, pages
        # the other: "Already released (when by alice)" or "Not released: ... already released by alice at ..."
        assert sum("already released" in p.lower() and "by alice" in p for p in pages) == 1, pages
        assert len(sink.wait_for(lambda m, mine=mine: f"X-Stronghold-Released: {mine} ".encode() in m.data)) == 1
    assert len(sink.messages) == 3


def test_a_message_deleted_on_one_node_is_a_note_on_the_other_not_an_error_page(
        app: Flask, other_node: Flask, sink: SmtpSink) -> None:
    """The second tab's delete, release or "not spam" on a message the first deleted: back to the
    Junk page with a note saying nothing was done (before: the 404 page "There is nothing here")."""
    mine = hold(app, "alice@example.com", "newsletter")
    a, b = _logged_in(app), _logged_in(other_node)
    csrf = token(b.client, "/junk/")  # the second tab was opened before the first deleted it
    assert a.post(f"/junk/{mine}/delete", {"confirm": "1"}, "/junk/").status_code == 302
    assert item(app, mine) is None
    for action in ("delete", "release", "allow", "notspam"):
        r = b.client.post(f"/junk/{mine}/{action}", data={"csrf_token": csrf, "confirm": "1"})
        assert r.status_code == 302 and r.headers["Location"].endswith("/junk/"), (action, r.status_code)
        assert "no longer in your quarantine" in flashes(b.client), action
    assert sink.messages == []
