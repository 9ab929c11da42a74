"""Release over SMTP: to the SmtpSink harness (and to a misbehaving peer) on SQLite and PostgreSQL.

The path through a real Postfix release listener is in tests/e2e/test_release_postfix.py.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import update

from devtools.localstack import free_port
from stronghold.release import ReleaseError, prepare, release
from stronghold.store import quarantine
from stronghold.store.db import Store
from stronghold.store.tables import QuarantineItem
from tests.harness.smtpsink import SmtpSink

RAW = (b"From: Shop <news@shop.example>\nTo: m1@example.com, m3@example.com\n"
       b"X-Spam-Flag: YES\nX-Spam-Custom-Thing:\n folded part\nSubject: Receipt \xc2\xa3 6.50\n"
       b"X-Stronghold-Released: 1 by forged\n\nThank you for your order.\n.leading dot\n")




def _hold(store: Store, **kw) -> list[int]:
    args = {"recipients": ["m1@example.com", "m3@example.com"], "sender": "news@shop.example",
            "subject": "Receipt", "queue_id": "QREL", "score": 0.99, "category": "spam",
            "reason": "spam", "trace": "model:0.99", "virus": None}
    args.update(kw)
    with store.session() as s:
        return quarantine.hold(s, RAW, **args)


def _mine(sink: SmtpSink, item: int) -> list:
    return [m for m in sink.messages if f"X-Stronghold-Released: {item} by".encode() in m.data]


def test_prepare_drops_spam_headers_normalises_lines_and_adds_ours() -> None:
    out = prepare(RAW, 42, "m3@example.com\r\nBcc: evil")
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [b"X-Stronghold-Released: 42 by m3@example.comBcc: evil",
                                   b"From: Shop <news@shop.example>", b"To: m1@example.com, m3@example.com",
                                   b"Subject: Receipt \xc2\xa3 6.50"]
    assert body == b"Thank you for your order.\r\n.leading dot\r\n"


@pytest.mark.parametrize("mode, kept", [
    ("check", []), ("header", [b"Authentication-Results: mx.test; dkim=fail header.d=bank.example"])])
def test_release_drops_authentication_results_forged_in_our_name(store: Store, sink: SmtpSink, make_config,
                                                                 mode: str, kept: list[bytes]) -> None:
    """A copy held before end of message took them off still carries them: the release does."""
    cfg = make_config(release_smtp=f"127.0.0.1:{sink.port}", authserv_id="mx.test", auth_mode=mode)
    raw = (b"Authentication-Results: mx.test; dkim=fail header.d=bank.example\n"
           b"Authentication-Results: elsewhere.test; spf=pass\n"
           b"Authentication-Results:\n MX.test; dkim=pass header.d=bank.example\n" + RAW)
    with store.session() as s:
        item = quarantine.hold(s, raw, recipients=["m3@example.com"], sender="ceo@bank.example", subject="Pay",
                               queue_id="QAR", score=0.99, category="spam", reason="spam", trace="", virus=None)[0]
    release(cfg, store, item, "m3@example.com")
    head = _mine(sink, item)[0].data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    ours = [b" ".join(line.split()) for line in head if line.startswith(b"Authentication-Results: mx.test")]
    assert ours == kept and b"dkim=pass" not in b"".join(head)
    assert b"Authentication-Results: elsewhere.test; spf=pass" in head  # other ids are left alone


def test_release_delivers_that_recipient_once(store: Store, sink: SmtpSink, make_config) -> None:
    cfg = make_config(release_smtp=f"127.0.0.1:{sink.port}")
    first, second = _hold(store)
    done = release(cfg, store, second, "m3@example.com")
    assert done.released is not None and done.delivered is not None and done.released_by == "m3@example.com"
    got = _mine(sink, second)
    assert len(got) == 1
    assert got[0].sender == "news@shop.example" and got[0].recipients == ["m3@example.com"]
    assert b"X-Spam-" not in got[0].data and b"\xc2\xa3" in got[0].data and b"\n.leading dot" in got[0].data
    with pytest.raises(ReleaseError, match=r"already released by m3@example\.com"):
        release(cfg, store, second, "m3@example.com")
    assert len(_mine(sink, second)) == 1 and _mine(sink, first) == []
    with pytest.raises(ReleaseError, match="does not exist"):
        release(cfg, store, 999_999, "admin")


def test_virus_released_by_admins_only(store: Store, sink: SmtpSink, make_config) -> None:
    cfg = make_config(release_smtp=f"127.0.0.1:{sink.port}")
    item = _hold(store, category="virus", virus="Eicar-Test-Signature")[0]
    with pytest.raises(ReleaseError, match="only an administrator"):
        release(cfg, store, item, "m1@example.com")
    with store.session() as s:
        assert quarantine.get(s, item).released is None
    release(cfg, store, item, "admin", admin=True)
    assert len(_mine(sink, item)) == 1


def test_two_racing_releases_deliver_once(store: Store, sink: SmtpSink, make_config) -> None:
    cfg = make_config(release_smtp=f"127.0.0.1:{sink.port}")
    item = _hold(store)[0]
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def click(n: int) -> None:
        barrier.wait()
        try:
            release(cfg, store, item, f"click{n}")
            outcomes.append("released")
        except ReleaseError:
            outcomes.append("refused")

    threads = [threading.Thread(target=click, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["released"]
    assert len(_mine(sink, item)) == 1


class _Peer(socketserver.StreamRequestHandler):
    """A relay that refuses RCPT (mode 'refuse') or hangs up after the message text ('vanish'); it
    offers no ESMTP extension."""

    def handle(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        self.wfile.write(b"220 peer\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"RCPT" and mode == "refuse":
                self.wfile.write(b"451 4.3.0 try later\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            elif verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                return  # no reply to the end of data
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture(params=["refuse", "vanish"])
def peer(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Peer)
    server.daemon_threads = True
    server.mode = request.param  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_refused_release_is_given_back_and_unknown_outcome_is_kept(store: Store, sink: SmtpSink, make_config,
                                                                   peer: tuple[str, int]) -> None:
    mode, port = peer
    item = _hold(store)[0]
    with pytest.raises(ReleaseError, match="refused the release" if mode == "refuse" else "did not confirm"):
        release(make_config(release_smtp=f"127.0.0.1:{port}"), store, item, "m1@example.com")
    with store.session() as s:
        held = quarantine.get(s, item)
    good = make_config(release_smtp=f"127.0.0.1:{sink.port}")
    if mode == "refuse":  # definitely not delivered: the user can simply try again
        assert held.released is None
        release(good, store, item, "m1@example.com")
    else:  # maybe delivered: kept claimed, unconfirmed; only a deliberate retry, later, sends again
        assert held.released is not None and held.delivered is None
        with pytest.raises(ReleaseError, match="delivery not confirmed"):
            release(good, store, item, "admin", retry_unconfirmed=True)
        with store.session() as s:
            s.execute(update(QuarantineItem).where(QuarantineItem.id == item)
                      .values(released=held.released - 3600))
        release(good, store, item, "admin", retry_unconfirmed=True)
    assert len(_mine(sink, item)) == 1


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_unreachable_relay_changes_nothing(store: Store, make_config) -> None:
    item = _hold(store)[0]
    with pytest.raises(ReleaseError, match="refused the release"):
        release(make_config(release_smtp=f"127.0.0.1:{free_port()}"), store, item, "m1@example.com")
    with store.session() as s:
        assert quarantine.get(s, item).released is None


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_utf8_envelope_needs_smtputf8_and_is_given_back_without_it(store: Store, sink: SmtpSink,
                                                                      make_config) -> None:
    """A copy of SMTPUTF8 mail goes out with SMTPUTF8 (through Postfix: tests/e2e/test_smtputf8_postfix.py);
    a relay that does not offer it refuses, and the user may try again (it raised UnicodeEncodeError
    out of release() and left the item claimed)."""
    item = _hold(store, sender="jörg@bücher.example")[0]
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Peer)  # answers EHLO with no extensions
    server.mode = "plain"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ReleaseError, match=r"refused the release \(SMTPUTF8 not supported"):
            release(make_config(release_smtp=f"127.0.0.1:{server.server_address[1]}"), store, item, "m1@example.com")
    finally:
        server.shutdown()
        server.server_close()
    with store.session() as s:
        assert quarantine.get(s, item).released is None
    release(make_config(release_smtp=f"127.0.0.1:{sink.port}"), store, item, "m1@example.com")
    assert [m.sender for m in _mine(sink, item)] == ["jörg@bücher.example"]
