"""The native milter engine end to end without a mail server: nativemilter.Connection over a
socketpair, the test playing the MTA (tests/harness/mtaside.py), several messages per connection.

The service is the real one (SQLite store, the trained model, a stand-in for clamd), the same
as test_milter_module.py's; where cheap, the same message also goes through the libmilter
engine (StrongholdMilter under pymilter's TestCtx) and both must answer alike.
"""

from __future__ import annotations

import email
import io
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import Milter
import pytest

from stronghold import antivirus, nativemilter, transaction
from stronghold.antivirus import EICAR
from stronghold.store import entries, messagelog
from stronghold.transaction import Transaction
from tests.harness.mtaside import ALL_STEPS, P_NR_DATA, Mta, fields
from tests.unit.test_milter_module import backend, milter, settings  # noqa: F401 - the same service
from tests.unit.test_native_milter import WAIT, _timeouts

pytestmark = pytest.mark.corpus  # the model is trained on it

CLEAN = b"From: a@b.example\nSubject: lunch\n\nSee you at noon for the project meeting.\n"
VIRUS = b"From: a@b.example\nSubject: x\n\n" + EICAR + b"\n"
FORGED = (b"From: a@b.example\nX-Spam-Flag: YES\nSubject: lunch\nX-Spam-Flag: YES\n\n"
          b"See you at noon for the project meeting.\n")


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection: (the milter's, the MTA's)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        mta_sock = socket.create_connection(listener.getsockname())
        milter_sock, _ = listener.accept()
    return milter_sock, mta_sock


@pytest.fixture(params=["unix"])
def native(milter, request) -> Iterator[SimpleNamespace]:  # noqa: F811
    """A native Connection on the libmilter fixture's service, negotiated and connected
    (over a unix socket pair; parametrize ``native`` with "tcp" for loopback TCP)."""
    ctx, store = milter
    service = ctx.getpriv().service
    milter_sock, mta_sock = socket.socketpair() if request.param == "unix" else _tcp_pair()
    _timeouts(milter_sock, WAIT)
    conn = nativemilter.Connection(service, milter_sock)
    thread = threading.Thread(target=conn.run, daemon=True)
    thread.start()
    mta = Mta(mta_sock)
    mta.negotiate(protocol=ALL_STEPS)
    mta.read_negotiation()
    mta.macro(b"C", {"j": "mx.example"})
    mta.connect("client.example", b"4", "192.0.2.7")
    mta.helo("client.example")
    yield SimpleNamespace(mta=mta, ctx=ctx, store=store, service=service, conn=conn)
    mta.quit()
    thread.join(WAIT)
    assert not thread.is_alive(), "the connection did not end at QUIT"
    mta_sock.close()


def _edit(cmd: bytes, data: bytes) -> tuple:
    """A modification packet as the libmilter engine's call: ("change", name, index, value), ..."""
    if cmd == b"m":
        name, value = fields(data[4:])
        return ("change", name, int.from_bytes(data[:4], "big"), value)
    if cmd == b"h":
        return ("add", *fields(data), -1)
    if cmd == b"i":
        name, value = fields(data[4:])
        return ("add", name, value, int.from_bytes(data[:4], "big"))
    if cmd == b"-":
        return ("delrcpt", *fields(data))
    raise AssertionError(f"unexpected modification {cmd!r}")


def send(mta: Mta, raw: bytes, sender: str, *rcpts: str, queue_id: str = "QID1") -> SimpleNamespace:
    """One message as TestCtx feeds it (the same headers and body): the replies to each recipient,
    the edits and the final reply."""
    msg = email.message_from_bytes(raw)
    mta.mail(f"<{sender}>")
    replies = []
    for rcpt in rcpts:
        mta.macro(b"R", {"i": queue_id})
        mta.rcpt(f"<{rcpt}>")
        replies.append(mta.read())
    mta.data()
    if not mta.agreed & P_NR_DATA:
        assert mta.read() == (b"c", b"")
    for name, value in msg.items():
        mta.header(name, value)
    body = msg.as_bytes().split(b"\n\n", 1)[1]
    for at in range(0, len(body), 8192):
        mta.body(body[at:at + 8192])
    mta.macro(b"E", {"i": queue_id})
    mta.eom()
    edits, final = mta.read_until_final()
    return SimpleNamespace(rcpts=replies, edits=[_edit(c, d) for c, d in edits], final=final)


def libmilter(ctx, monkeypatch: pytest.MonkeyPatch, raw: bytes, sender: str, *rcpts: str) -> SimpleNamespace:
    """The same message through StrongholdMilter: its result and the edits it asked for, in order."""
    edits: list[tuple] = []
    monkeypatch.setattr(ctx, "chgheader", lambda name, idx, value: edits.append(("change", name, idx, value)))
    monkeypatch.setattr(ctx, "addheader", lambda name, value, idx=-1: edits.append(("add", name, value, idx)))
    monkeypatch.setattr(ctx, "delrcpt", lambda rcpt: edits.append(("delrcpt", rcpt)))
    ctx._reply = None
    result = ctx._feedFile(io.BytesIO(raw), sender, *rcpts)
    return SimpleNamespace(result=result, reply=ctx._reply, edits=edits)


def _reply_text(final: tuple[bytes, bytes]) -> str:
    assert final[0] == b"y", final
    return fields(final[1])[0]


@pytest.mark.parametrize("native", ["unix", "tcp"], indirect=True)
def test_data_is_answered_over_tcp_only(native, monkeypatch) -> None:
    """Over TCP the reply to DATA carries the ACK Postfix's next packet would otherwise wait for
    (~40 ms, delayed ACK against Nagle); over a unix socket it is a round trip for nothing."""
    assert bool(native.mta.agreed & P_NR_DATA) == (native.conn.sock.family == socket.AF_UNIX)
    got = send(native.mta, CLEAN, "a@b.example", "u@example.com")  # reads the reply if one is due
    assert got.final == (b"a", b"") and native.mta.nothing_pending()


def test_messages_on_one_connection_answer_as_the_libmilter_engine(native, monkeypatch) -> None:
    mta, ctx = native.mta, native.ctx
    virus = send(mta, VIRUS, "a@b.example", "u@example.com")
    assert virus.rcpts == [(b"c", b"")] and virus.edits == []
    assert _reply_text(virus.final) == "554 5.7.0 Message contains a virus: Test.EICAR"
    ref = libmilter(ctx, monkeypatch, VIRUS, "a@b.example", "u@example.com")
    assert ref.result == Milter.REJECT and ref.reply == ("554", "5.7.0", "Message contains a virus: Test.EICAR")

    clean = send(mta, CLEAN, "a@b.example", "v@example.com")
    assert clean.final == (b"a", b"")
    added = {e[1]: e[2] for e in clean.edits if e[0] == "add"}
    assert added["X-Spam-Flag"] in ("YES", "NO") and added["X-Spam-Status"].startswith(added["X-Spam-Flag"][:1])
    assert added["X-Stronghold-Version"] == native.service.version_header()
    assert clean.edits == libmilter(ctx, monkeypatch, CLEAN, "a@b.example", "v@example.com").edits

    forged = send(mta, FORGED, "a@b.example", "w@example.com")
    assert forged.final == (b"a", b"")
    assert [e for e in forged.edits if e[0] == "change"] == [("change", "X-Spam-Flag", 2, ""),
                                                             ("change", "X-Spam-Flag", 1, "")]
    assert forged.edits == libmilter(ctx, monkeypatch, FORGED, "a@b.example", "w@example.com").edits


def _concluded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The recipients of every Transaction.conclude (a spy: the real one runs)."""
    seen: list[tuple[str, ...]] = []
    real = Transaction.conclude

    def conclude(self: Transaction, env):
        seen.append(env.recipients)
        return real(self, env)

    monkeypatch.setattr(Transaction, "conclude", conclude)
    return seen


def test_a_blocked_recipient_is_refused_and_the_message_goes_on_for_the_others(native, monkeypatch) -> None:
    with native.store.session() as s:
        entries.add_entry(s, "w@example.com", "block", "@spammer.example")
    concluded = _concluded(monkeypatch)
    got = send(native.mta, CLEAN, "x@spammer.example", "w@example.com", "y@example.com")
    assert got.rcpts[1] == (b"c", b"")
    assert got.rcpts[0][0] == b"y" and fields(got.rcpts[0][1])[0] == "550 5.7.1 Sender is blocked"
    assert got.final == (b"a", b"") and not [e for e in got.edits if e[0] == "delrcpt"]
    assert concluded == [("y@example.com",)]
    ctx = native.ctx
    ref = libmilter(ctx, monkeypatch, CLEAN, "x@spammer.example", "w@example.com", "y@example.com")
    assert ref.result == Milter.REJECT and ref.reply[:2] == ("550", "5.7.1")  # TestCtx stops at the refusal


def test_state_does_not_leak_between_messages_nor_across_an_abort(native, monkeypatch) -> None:
    mta = native.mta
    concluded = _concluded(monkeypatch)
    assert send(mta, CLEAN, "a@b.example", "u@example.com", queue_id="Q1").final == (b"a", b"")
    mta.mail("<a@b.example>")
    mta.rcpt("<half@example.com>")
    assert mta.read() == (b"c", b"")
    mta.header("Subject", "never finished")
    mta.abort()
    assert send(mta, CLEAN, "a@b.example", "v@example.com", queue_id="Q2").final == (b"a", b"")
    assert concluded == [("u@example.com",), ("v@example.com",)]
    native.service.db.drain(10)
    with native.store.session() as s:
        rows = messagelog.recent(s, messagelog.LogFilter(addresses=("v@example.com",)))
    assert [(r.queue_id, [x.address for x in r.recipients]) for r in rows] == [("Q2", ["v@example.com"])]


def test_a_failing_callback_tempfails_and_the_connection_serves_the_next_message(native, monkeypatch) -> None:
    mta = native.mta
    real = Transaction.conclude

    def broken(self: Transaction, env):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Transaction, "conclude", broken)
    assert send(mta, CLEAN, "a@b.example", "u@example.com").final == (b"t", b"")
    monkeypatch.setattr(Transaction, "conclude", real)
    assert send(mta, CLEAN, "a@b.example", "u@example.com").final == (b"a", b"")


def test_a_new_mail_without_an_abort_starts_a_new_message(native, monkeypatch) -> None:
    mta = native.mta
    concluded = _concluded(monkeypatch)
    mta.mail("<a@b.example>")
    mta.rcpt("<first@example.com>")
    assert mta.read() == (b"c", b"")
    assert send(mta, CLEAN, "c@d.example", "second@example.com").final == (b"a", b"")
    assert concluded == [("second@example.com",)]


def test_end_of_message_without_mail_tempfails(native) -> None:
    mta = native.mta
    mta.rcpt("<u@example.com>")  # a recipient, but no MAIL on this connection yet
    assert mta.read() == (b"c", b"")
    mta.eom()
    assert mta.read() == (b"t", b"")
    mta.eom()
    assert mta.read() == (b"t", b"")
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")
    assert mta.read() == (b"c", b"")
    mta.abort()  # the MAIL is gone with the abort
    mta.rcpt("<v@example.com>")
    assert mta.read() == (b"c", b"")
    mta.eom()
    assert mta.read() == (b"t", b"")
    assert send(mta, CLEAN, "a@b.example", "u@example.com").final == (b"a", b"")
    mta.eom()  # the message is over: a second end without a new MAIL has nothing to decide
    assert mta.read() == (b"t", b"")


ODD_PARAMETERS = (b"From: a@b.example\nSubject: lunch\nContent-Type: text/plain; a*=x; a*0=y\n"
                  b"Content-Disposition: inline; filename=\"\"\n\nSee you at noon for the project meeting.\n")


def test_parameters_the_stdlib_cannot_read_are_decided_not_tempfailed(native) -> None:
    """RFC 2231 pieces the stdlib cannot order made the parse raise: every delivery attempt was
    answered tempfail, so the message could never arrive.  Now it is read and decided."""
    got = send(native.mta, ODD_PARAMETERS, "a@b.example", "u@example.com")
    assert got.final == (b"a", b"")


class _EarlyScanner:
    """Records when the scan is begun and when it is read, around the parse."""

    name = "clamd"

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def start(self, stream):  # the ClamdScanner.start interface
        self.events.append("start")
        return self

    def scan(self, stream):
        self.events.append("scan")
        stream.seek(0)
        return antivirus.ScanResult("Test.EICAR" if EICAR in stream.read() else None)



def test_the_scan_is_begun_before_the_parse_and_read_after(native, monkeypatch) -> None:
    """clamd gets the message before we parse it, so that it scans while we parse and score."""
    events: list[str] = []
    monkeypatch.setattr(native.service, "scanner", _EarlyScanner(events))
    real_parse = transaction.parse
    monkeypatch.setattr(transaction, "parse", lambda raw: (events.append("parse"), real_parse(raw))[1])
    got = send(native.mta, VIRUS, "a@b.example", "u@example.com")
    assert events == ["start", "parse", "scan"]
    assert got.final[0] == b"y" and "virus" in _reply_text(got.final).lower()  # the verdict used its result
