"""The milter protocol engine in C (stronghold._miltercore.Session) driven by a test playing the MTA.

A Session sits on one end of a socketpair; tests/harness/mtaside.py packs the MTA's commands
on the other.  Checked: negotiation, which commands the Session answers itself (by the
agreed no-reply bits), macros, the client and HELO, recipients, the message spooled exactly
as the libmilter engine (StrongholdMilter) spools the same headers and body chunks, batches
within MAX_BATCH and memory_limit, hostile input (a close with a reason, never a hang or a
crash), QUIT_NC, and wrong argument types.  No corpus, no model: the sanitized run
(test_native_sanitized.py) runs this file again under ASan/UBSan.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stronghold import nativemilter
from stronghold._miltercore import (  # fails when the native core is not built
    EV_ABORT,
    EV_CLOSE,
    EV_DATA,
    EV_EOM,
    EV_RCPT,
    MAX_BATCH,
    MAX_PACKET,
    WANTED,
    Session,
)
from stronghold.authres import Authenticator
from stronghold.dnscache import Dns
from stronghold.milter import StrongholdMilter
from stronghold.transaction import Transaction
from tests.harness.mtaside import (
    ADDHDRS,
    ALL_STEPS,
    CHGHDRS,
    DELRCPT,
    LEN,
    NO_REPLY_BITS,
    P_NOEOH,
    P_NOUNKNOWN,
    P_NR_DATA,
    P_NR_HDR,
    Mta,
    packet,
)

FLAGS = ADDHDRS | CHGHDRS | DELRCPT  # what the product's Session asks of the MTA (0x19)
CONTINUE, ACCEPT = packet(b"c"), packet(b"a")
WAIT = 5.0  # seconds any single step may take before the test fails


def _timeouts(sock: socket.socket, seconds: float) -> None:
    """Bound the Session's blocking reads and writes (it reads the descriptor directly)."""
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def default_answer(event: tuple) -> bytes:
    """What the product answers where a reply is due: continue a recipient, accept a message."""
    return {EV_RCPT: CONTINUE, EV_EOM: ACCEPT}.get(event[0], b"")


class Driven:
    """A Session run in a thread of its own, the test holding the MTA's end.

    Each event is queued with what the Session said at that moment (client, helo, protocol,
    the macros in ``watch``): those are read in the Session's thread, between two next()."""

    def __init__(self, memory_limit: int = 1 << 20, max_bytes: int = 1 << 20, actions: int = FLAGS,
                 answer: Callable[[tuple], bytes] = default_answer, watch: tuple[str, ...] = (),
                 timeout: float = WAIT, data_reply: bool = True,
                 ahead: Callable[[Mta], object] | None = None) -> None:
        self.milter_sock, mta_sock = socket.socketpair()
        _timeouts(self.milter_sock, timeout)
        self.session = Session(self.milter_sock.fileno(), actions, memory_limit, max_bytes, data_reply=data_reply)
        self.mta = Mta(mta_sock, timeout=WAIT)
        if ahead is not None:  # what the MTA has sent before the Session's first read
            ahead(self.mta)
        self.answer = answer
        self.watch = watch
        self.events: queue.Queue[tuple[tuple, dict[str, Any]]] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        reply = b""
        while True:
            try:
                event = self.session.next(reply)
            except Exception as exc:  # noqa: BLE001 - handed to the test
                self.events.put((("raised", exc), {}))
                return
            s = self.session
            seen = {"client": s.client, "helo": s.helo, "protocol": s.protocol,
                    "macros": {name: s.macro(name) for name in self.watch}}
            self.events.put((event, seen))
            if event[0] == EV_CLOSE:
                return
            reply = self.answer(event)

    def event(self, timeout: float = WAIT) -> tuple:
        return self.seen(timeout)[0]

    def seen(self, timeout: float = WAIT) -> tuple[tuple, dict[str, Any]]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the Session handed over no event") from None

    def closed(self) -> str:
        """The reason of the EV_CLOSE that must come next (events before it are skipped)."""
        while True:
            event = self.event()
            if event[0] == EV_CLOSE:
                return event[1]
            assert event[0] != "raised", event

    def finish(self) -> None:
        self.mta.sock.close()
        self.thread.join(WAIT * 2)
        assert not self.thread.is_alive(), "the Session did not end at end of file"
        self.milter_sock.close()


@pytest.fixture
def drive() -> Iterator[Callable[..., Driven]]:
    made: list[Driven] = []

    def make(**kwargs: Any) -> Driven:
        made.append(Driven(**kwargs))
        return made[-1]

    yield make
    for driven in made:
        driven.finish()


def _envelope(mta: Mta) -> None:
    mta.connect("mx.example", b"4", "192.0.2.1")
    mta.helo("mx.example")
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")


# -- negotiation -------------------------------------------------------------------------------

@pytest.mark.parametrize("offered", [ALL_STEPS, 0, P_NR_HDR | P_NOEOH | 0x3, ALL_STEPS & ~NO_REPLY_BITS,
                                     WANTED])
def test_negotiation_agrees_what_is_offered_and_wanted(drive, offered: int) -> None:
    d = drive()
    d.mta.negotiate(protocol=offered)
    assert d.mta.read_negotiation() == (6, FLAGS, offered & WANTED)
    _envelope(d.mta)
    event, seen = d.seen()
    assert event[0] == EV_RCPT and seen["protocol"] == offered & WANTED


def test_negotiation_answers_the_older_version_of_the_mta(drive) -> None:
    d = drive()
    d.mta.negotiate(version=2)
    assert d.mta.read_negotiation() == (2, FLAGS, WANTED)
    d2 = drive()
    d2.mta.negotiate(version=1)
    assert "older than version 2" in d2.closed()


@pytest.mark.parametrize("allowed", [0, ADDHDRS | CHGHDRS, ADDHDRS | DELRCPT, CHGHDRS | DELRCPT, 0x1FF & ~DELRCPT])
def test_an_mta_not_allowing_the_actions_gets_the_session_closed(drive, allowed: int) -> None:
    d = drive()
    d.mta.negotiate(actions=allowed)
    assert "does not allow" in d.closed()
    assert d.mta.nothing_pending()  # no negotiation answer


def test_a_short_negotiation_closes_the_session(drive) -> None:
    d = drive()
    d.mta.send(b"O", struct.pack(">II", 6, 0x1FF))
    assert d.closed() == "short negotiation"


# -- the Session's own replies -----------------------------------------------------------------

def test_no_reply_bits_off_every_step_gets_continue(drive) -> None:
    d = drive(watch=("i",))
    mta = d.mta
    mta.negotiate(protocol=ALL_STEPS & ~NO_REPLY_BITS)
    assert mta.read_negotiation()[2] == P_NOEOH | P_NOUNKNOWN
    mta.macro(b"C", {"j": "mx.example"})
    assert mta.nothing_pending()  # macros are never answered
    for step in (lambda: mta.connect("mx.example"), lambda: mta.helo("mx.example"),
                 lambda: mta.mail("<a@b.example>")):
        step()
        assert mta.read() == (b"c", b"")
    mta.rcpt("<u@example.com>")
    assert d.event()[0] == EV_RCPT
    assert mta.read() == (b"c", b"")  # the caller's answer
    mta.data()
    assert mta.read() == (b"c", b"")
    for name, value in (("Subject", "x"), ("From", "a@b.example")):
        mta.header(name, value)
        assert mta.read() == (b"c", b"")
    mta.eoh()
    assert mta.read() == (b"c", b"")
    mta.body(b"hello\r\n")
    assert mta.read() == (b"c", b"")
    mta.unknown("HELP")
    assert mta.read() == (b"c", b"")
    mta.eom()
    assert d.event()[0] == EV_EOM
    assert mta.read() == (b"a", b"")
    assert mta.nothing_pending()


def test_no_reply_bits_agreed_only_data_and_decisions_are_answered(drive) -> None:
    d = drive()
    mta = d.mta
    mta.negotiate(protocol=ALL_STEPS)
    assert mta.read_negotiation()[2] == WANTED
    mta.connect("mx.example")
    mta.helo("mx.example")
    mta.mail("<a@b.example>")
    assert mta.nothing_pending()
    mta.rcpt("<u@example.com>")
    assert d.event()[0] == EV_RCPT
    assert mta.read() == (b"c", b"")
    mta.data()
    assert mta.read() == (b"c", b"")  # DATA stays answered (see WANTED in miltercore.c)
    mta.header("Subject", "x")
    mta.header("From", "a@b.example")
    mta.body(b"hello\r\n")
    assert mta.nothing_pending()
    mta.eom()
    assert d.event()[0] == EV_EOM
    assert mta.read() == (b"a", b"")
    assert mta.nothing_pending()


@pytest.mark.parametrize("offered", [ALL_STEPS, ALL_STEPS & ~P_NR_DATA])
def test_without_data_reply_data_goes_unanswered_where_the_mta_offers_it(drive, offered: int) -> None:
    """The product's choice on a unix socket: one round trip less per message."""
    d = drive(data_reply=False)
    mta = d.mta
    mta.negotiate(protocol=offered)
    assert mta.read_negotiation()[2] == offered & (WANTED | P_NR_DATA)
    _envelope(mta)
    assert d.event()[0] == EV_RCPT
    assert mta.read() == (b"c", b"")
    mta.data()
    if not offered & P_NR_DATA:  # an MTA that cannot do without the reply still gets it
        assert mta.read() == (b"c", b"")
    mta.header("Subject", "x")
    mta.body(b"hello\r\n")
    assert mta.nothing_pending()
    mta.eom()
    assert d.event()[0] == EV_EOM
    assert mta.read() == (b"a", b"")
    assert mta.nothing_pending()


# -- macros, client, HELO, envelope ------------------------------------------------------------

def test_macros_from_the_latest_stage_that_sent_them(drive) -> None:
    d = drive(watch=("i", "{i}", "j", "{j}", "daemon_name", "{daemon_name}", "{rcpt_addr}", "nothere", "{}"))
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.macro(b"C", {"j": "mx.example", "{daemon_name}": "smtpd", "i": "from-connect"})
    mta.connect("mx.example")
    mta.macro(b"M", {"i": "QID1", "{auth_type}": ""})
    mta.mail("<a@b.example>")
    mta.macro(b"R", {"{rcpt_addr}": "u@example.com"})
    mta.rcpt("<u@example.com>")
    macros = d.seen()[1]["macros"]
    assert macros == {"i": "QID1", "{i}": "QID1", "j": "mx.example", "{j}": "mx.example",
                      "daemon_name": "smtpd", "{daemon_name}": "smtpd", "{rcpt_addr}": "u@example.com",
                      "nothere": None, "{}": None}
    mta.macro(b"R", {"i": "QID2"})  # a later stage that sends it again wins
    mta.rcpt("<v@example.com>")
    assert d.seen()[1]["macros"]["i"] == "QID2"


def test_macros_of_the_previous_message_do_not_shadow_the_new_ones(drive) -> None:
    """Postfix sends {i} with RCPT and with end of data (milter_end_of_data_macros): at message 2's
    RCPT, message 1's end-of-data value must not come back."""
    d = drive(watch=("i",))
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.connect("mx.example")
    mta.mail("<a@b.example>")
    mta.macro(b"R", {"i": "QID1"})
    mta.rcpt("<u@example.com>")
    assert d.seen()[1]["macros"]["i"] == "QID1"
    mta.macro(b"E", {"i": "QID1"})
    mta.eom()
    assert d.event()[0] == EV_EOM
    mta.mail("<a@b.example>")
    mta.macro(b"R", {"i": "QID2"})
    mta.rcpt("<u@example.com>")
    assert d.seen()[1]["macros"]["i"] == "QID2"


@pytest.mark.parametrize(("family", "address", "expected"), [
    (b"4", "192.0.2.7", "192.0.2.7"),
    (b"6", "2001:db8::7", "2001:db8::7"),
    (b"L", "/var/spool/postfix/public/cleanup", "/var/spool/postfix/public/cleanup"),
    (b"U", "", ""),
    (b"\xe9", "192.0.2.7", "192.0.2.7"),  # no family Postfix sends: read, never a decoding error
])
def test_client_and_helo(drive, family: bytes, address: str, expected: str) -> None:
    d = drive()
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.connect("client.example", family, address, port=0 if family == b"L" else 40000)
    mta.helo("helo.example")
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")
    seen = d.seen()[1]
    assert seen["client"] == ("client.example", family.decode("latin-1"), expected)
    assert seen["helo"] == "helo.example"


def test_recipients_say_which_is_the_first_of_a_message_and_decode_like_pymilter(drive) -> None:
    d = drive()
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.connect("mx.example")
    mta.mail("<a@b.example>", "SIZE=100", "BODY=8BITMIME")
    mta.rcpt("<ü@example.com>", b"NOTIFY=\xff")
    first = d.event()
    assert first == (EV_RCPT, True, ("<a@b.example>", "SIZE=100", "BODY=8BITMIME"),
                     ("<ü@example.com>", "NOTIFY=\udcff"))
    mta.rcpt("<v@example.com>")
    assert d.event() == (EV_RCPT, False, ("<a@b.example>", "SIZE=100", "BODY=8BITMIME"), ("<v@example.com>",))
    mta.abort()
    assert d.event() == (EV_ABORT,)
    mta.mail(b"<\xfe@b.example>")
    mta.rcpt("<w@example.com>")
    assert d.event() == (EV_RCPT, True, ("<\udcfe@b.example>",), ("<w@example.com>",))


# -- the message as the libmilter engine spools it ---------------------------------------------

def _service(tmp: Path, max_bytes: int, memory: int) -> SimpleNamespace:
    """What Transaction and the engines read of a Service: its settings, and the authenticator
    that tells our Authentication-Results (no lookup is made)."""
    cfg = SimpleNamespace(max_message_bytes=max_bytes, spool_memory_bytes=memory, data_dir=tmp)
    return SimpleNamespace(cfg=cfg, authenticator=Authenticator("check", "mx.test", Dns()))


def _libmilter_spool(service: SimpleNamespace, heads: list[tuple[str, bytes]], chunks: list[bytes],
                     last_in_eom: bool = False) -> Transaction:
    """The headers and body chunks through StrongholdMilter's callbacks, as libmilter calls them
    (a chunk sent with end of message goes to the body callback only when it is not empty)."""
    m = StrongholdMilter(service)  # type: ignore[arg-type]
    m._setctx(None)
    m.envfrom("<a@b.example>")
    for name, value in heads:
        m.header(name, value)
    for i, chunk in enumerate(chunks):
        if chunk or not (last_in_eom and i == len(chunks) - 1):
            m.body(chunk)
    if not m.in_body:  # what eom() does for a message without a body
        m._end_headers()
    assert m.txn is not None
    return m.txn


def _native_spool(service: SimpleNamespace, heads: list[tuple[str, bytes]], chunks: list[bytes],
                  last_in_eom: bool) -> tuple[Transaction, list[tuple]]:
    """The same through a Session and nativemilter.Connection.on_data, all input written first (it
    fits the socket's buffer) and the Session run in this thread."""
    cfg = service.cfg
    milter_sock, mta_sock = socket.socketpair()
    _timeouts(milter_sock, WAIT)
    mta = Mta(mta_sock, buffered=True)
    mta.negotiate()
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")
    mta.data()
    for name, value in heads:
        mta.header(name, value)
    body = chunks[:-1] if last_in_eom and chunks else chunks
    for chunk in body:
        mta.body(chunk)
    mta.eom(chunks[-1] if last_in_eom and chunks else b"")
    mta.quit()
    mta.flush()
    conn = nativemilter.Connection(service, milter_sock)  # type: ignore[arg-type]
    conn.txn = Transaction(service, "<a@b.example>")  # type: ignore[arg-type]
    session = Session(milter_sock.fileno(), FLAGS, cfg.spool_memory_bytes, cfg.max_message_bytes)
    events, reply = [], b""
    try:
        while True:
            event = session.next(reply)
            events.append(event)
            if event[0] == EV_CLOSE:
                break
            if event[0] == EV_DATA:
                conn.on_data(event[1], event[2])
            elif event[0] == EV_EOM:
                conn.on_data(event[1], event[2])
                conn.txn.size, conn.txn.oversize = event[3], event[4]
            reply = default_answer(event)
    finally:
        milter_sock.close()
        mta_sock.close()
    assert events[-1] == (EV_CLOSE, "quit")
    return conn.txn, events


def _spooled(txn: Transaction) -> bytes:
    txn.spool.seek(0)
    return txn.spool.read()


def assert_same_spool(tmp: Path, heads: list[tuple[str, bytes]], chunks: list[bytes], max_bytes: int,
                      memory: int, last_in_eom: bool = False) -> list[tuple]:
    service = _service(tmp, max_bytes, memory)
    ref = _libmilter_spool(service, heads, chunks, last_in_eom)
    ours, events = _native_spool(service, heads, chunks, last_in_eom)
    try:
        assert _spooled(ours) == _spooled(ref)
        assert (ours.size, ours.oversize) == (ref.size, ref.oversize)
        assert ours.strip == ref.strip and ours.strip_spans == ref.strip_spans
        assert (ours.subject_index, ours.subject_raw) == (ref.subject_index, ref.subject_raw)
        assert ours.seen_headers == ref.seen_headers and ours.authres == ref.authres
        assert ours.stored_copy() == ref.stored_copy()
    finally:
        ours.close()
        ref.close()
    return events


NAMES = st.one_of(
    st.sampled_from(["Subject", "subject", "From", "X-Spam-Flag", "x-spam-status", "X-Stronghold-Version",
                     "X-Spamming-Tool", "Received", "X-Stronghold-Note", " X-Spam-Level",
                     "Authentication-Results"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
            min_size=1, max_size=12),
)
VALUES = st.one_of(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"")),
                  st.sampled_from([b"mx.test; dkim=pass", b"elsewhere.test; spf=pass"]))
HEADS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
CHUNKS = st.lists(st.binary(max_size=200), max_size=4)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(heads=HEADS, chunks=CHUNKS, cut=st.one_of(st.integers(-6, 6).map(lambda d: ("end", d)),
                                                 st.floats(0, 1).map(lambda f: ("part", f))),
       memory=st.integers(1, 600), last_in_eom=st.booleans())
def test_spool_equals_the_libmilter_engines(tmp_path: Path, heads, chunks, cut, memory: int,
                                            last_in_eom: bool) -> None:
    whole = _libmilter_spool(_service(tmp_path, 1 << 30, 1 << 20), heads, chunks, last_in_eom)
    total = whole.size
    whole.close()
    max_bytes = max(0, total + cut[1]) if cut[0] == "end" else int(total * cut[1])
    assert_same_spool(tmp_path, heads, chunks, max_bytes, memory, last_in_eom)


@pytest.mark.parametrize("cap", [10_000, 7, 0])
def test_spool_with_empty_values_and_no_body(tmp_path: Path, cap: int) -> None:
    heads = [("Subject", b""), ("X-Spam-Flag", b""), ("From", b"a@b.example"), ("Subject", b"second")]
    assert_same_spool(tmp_path, heads, [], cap, 1 << 20)
    assert_same_spool(tmp_path, [], [b"body only\r\n"], cap, 1 << 20)
    assert_same_spool(tmp_path, [], [], cap, 1 << 20)


def test_header_places_are_in_message_bytes_before_the_cut(tmp_path: Path) -> None:
    """start:end count every byte of the message, also past max_bytes (the Connection clamps them)."""
    service = _service(tmp_path, 10, 1 << 20)
    txn, events = _native_spool(service, [("Subject", b"hello"), ("From", b"x")], [b"body"], False)
    txn.close()
    eom = next(e for e in events if e[0] == EV_EOM)
    assert eom[1:] == ([("Subject", b"hello", 0, 16), ("From", b"x", 16, 25)], b"Subject: h", 31, True, True)


def test_non_ascii_header_names_spool_as_the_libmilter_engines(tmp_path: Path) -> None:
    heads = [("Ünïcode-Name", b"v"), ("X-Spam-Ä", b"forged"), ("Subject", b"hi")]
    assert_same_spool(tmp_path, heads, [b"body\r\n"], 1 << 20, 1 << 20)


def test_held_copy_drops_many_forged_headers_in_linear_time(tmp_path: Path) -> None:
    """Each X-Spam-* header of a spam that gets held is cut from its copy: one pass, not a copy of
    the message per header (8,000 of them before an 8 MB body took ~11 s of CPU, 50,000 hours)."""
    heads = [("X-Spam-A", b"1")] * 8000 + [("Authentication-Results", b"mx.test; dkim=pass")] * 100
    txn = _libmilter_spool(_service(tmp_path, 1 << 30, 1 << 20), heads, [b"x" * 8_000_000])
    try:
        started = time.process_time()
        copy = txn.stored_copy()
        assert time.process_time() - started < 1.0
    finally:
        txn.close()
    assert copy == b"\r\n" + b"x" * 8_000_000


# -- batches -----------------------------------------------------------------------------------

def _collect(d: Driven) -> tuple[list[tuple], bytes, tuple]:
    """Headers and bytes of the EV_DATA batches up to EV_EOM, and the EV_EOM event."""
    headers: list[tuple] = []
    data = bytearray()
    batches = []
    while True:
        event = d.event()
        assert event[0] in (EV_DATA, EV_EOM, EV_RCPT), event
        if event[0] == EV_RCPT:
            continue
        batches.append(event)
        headers += event[1]
        data += event[2]
        if event[0] == EV_EOM:
            return batches, bytes(data), event


def test_more_than_max_batch_headers_come_in_batches(drive) -> None:
    d = drive()
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")
    count = 2 * MAX_BATCH + 10
    mta.buffered = True
    for i in range(count):
        mta.header(f"X-N{i}", f"v{i}")
    mta.eom(b"body")
    threading.Thread(target=mta.flush, daemon=True).start()
    batches, data, eom = _collect(d)
    assert all(len(b[1]) <= MAX_BATCH for b in batches)
    headers = [h for b in batches for h in b[1]]
    assert [(n, v) for n, v, _s, _e in headers] == [(f"X-N{i}", f"v{i}".encode()) for i in range(count)]
    lines = b"".join(f"X-N{i}: v{i}\r\n".encode() for i in range(count))
    assert data == lines + b"\r\nbody"
    assert all(data[s:e] == f"{n}: ".encode() + v + b"\r\n" for n, v, s, e in headers)
    assert eom[3] == len(data) and eom[4] is False and eom[5] is True


def test_data_is_handed_over_before_it_grows_past_memory_limit(drive) -> None:
    limit, chunk = 5000, 1500
    d = drive(memory_limit=limit)
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")
    body = bytes(range(256)) * 100
    mta.buffered = True
    mta.header("Subject", "x" * 3000)
    mta.header("From", "a@b.example")
    for at in range(0, len(body), chunk):
        mta.body(body[at:at + chunk])
    mta.eom()
    threading.Thread(target=mta.flush, daemon=True).start()
    batches, data, _eom = _collect(d)
    assert data == b"Subject: " + b"x" * 3000 + b"\r\nFrom: a@b.example\r\n\r\n" + body
    assert len(batches) > len(data) // (limit + chunk)  # handed over on the way, not all at the end
    largest_packet = 3000 + len("Subject: \r\n")
    assert all(len(b[2]) < limit + largest_packet for b in batches)
    assert all(len(b[2]) < limit + chunk for b in batches[1:])


def test_a_big_body_without_no_reply_bits_every_chunk_answered(drive) -> None:
    """The MTA writes from a thread of its own while it reads the replies: the Session's
    writes and reads interleave over finite socket buffers."""
    chunk, chunks, cap = 65535, 40, 1_000_000
    d = drive(memory_limit=200_000, max_bytes=cap)
    mta = d.mta
    mta.negotiate(protocol=ALL_STEPS & ~NO_REPLY_BITS)
    mta.read_negotiation()
    mta.mail("<a@b.example>")
    assert mta.read() == (b"c", b"")
    mta.rcpt("<u@example.com>")
    assert mta.read() == (b"c", b"")
    piece = bytes(range(256)) * (chunk // 256) + b"x" * (chunk % 256)
    writer = threading.Thread(target=lambda: [mta.body(piece) for _ in range(chunks)] and mta.eom(), daemon=True)
    writer.start()
    replies = [mta.read() for _ in range(chunks)]
    assert replies == [(b"c", b"")] * chunks
    writer.join(WAIT)
    _batches, data, eom = _collect(d)
    assert data == (b"\r\n" + piece * chunks)[:cap]
    assert eom[3] == 2 + chunk * chunks and eom[4] is True
    assert mta.read() == (b"a", b"")


# -- hostile or odd input ------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "why"), [
    (b"\0\0\0\0", "bad packet length"),
    (LEN.pack(MAX_PACKET + 1) + b"B", "bad packet length"),
    (LEN.pack(0xFFFFFFFF), "bad packet length"),
    (packet(b"Z", b"whatever"), "unknown milter command"),
    (packet(b"L", b"Subject"), "header without a name"),
    (packet(b"B", b"x" * 100)[:50], "connection closed by the MTA"),
    (LEN.pack(10)[:3], "connection closed by the MTA"),
    (packet(b"Q"), "quit"),
])
def test_hostile_input_closes_with_a_reason(drive, raw: bytes, why: str) -> None:
    d = drive()
    d.mta.negotiate()
    d.mta.read_negotiation()
    d.mta.raw(raw)
    d.mta.sock.shutdown(socket.SHUT_WR)
    assert d.closed() == why
    d.thread.join(WAIT)
    with pytest.raises(RuntimeError, match="closed"):
        d.session.next()


def test_a_silent_mta_times_out(drive) -> None:
    d = drive(timeout=0.2, ahead=Mta.negotiate)  # sent first: only the silence after it is timed
    d.mta.read_negotiation()
    assert d.closed() == "timeout reading from the MTA"


def test_quit_nc_starts_the_connection_over(drive) -> None:
    d = drive(watch=("j", "i"))
    mta = d.mta
    mta.negotiate()
    mta.read_negotiation()
    mta.macro(b"C", {"j": "first"})
    mta.connect("first.example", b"4", "192.0.2.1")
    mta.helo("first.example")
    mta.macro(b"M", {"i": "QID1"})
    mta.mail("<a@b.example>")
    mta.rcpt("<u@example.com>")
    assert d.event()[0] == EV_RCPT
    assert mta.read() == (b"c", b"")
    mta.header("Subject", "half a message")
    mta.quit_nc()
    assert d.event() == (EV_ABORT,)
    mta.negotiate(protocol=ALL_STEPS & ~NO_REPLY_BITS)
    assert mta.read_negotiation() == (6, FLAGS, P_NOEOH | P_NOUNKNOWN)
    mta.connect("second.example", b"6", "2001:db8::2")
    assert mta.read() == (b"c", b"")  # the new agreement holds
    mta.mail("<c@d.example>")
    assert mta.read() == (b"c", b"")
    mta.rcpt("<v@example.com>")
    event, seen = d.seen()
    assert event == (EV_RCPT, True, ("<c@d.example>",), ("<v@example.com>",))
    assert seen["client"] == ("second.example", "6", "2001:db8::2")
    assert seen["helo"] == "" and seen["macros"] == {"j": None, "i": None}
    mta.eom()
    _batches, data, eom = _collect(d)
    assert data == b"\r\n" and eom[3] == 2  # nothing of the first message's headers


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from(b"ODCHMRTLNBEAKUQZ\0"), st.binary(max_size=30)).map(
        lambda t: packet(bytes([t[0]]), t[1]))), max_size=12))
def test_random_input_never_hangs_nor_crashes(garbage: list[bytes]) -> None:
    d = Driven(timeout=2.0)
    try:
        d.mta.negotiate()
        d.mta.read_negotiation()
        d.mta.raw(b"".join(garbage))
        d.mta.sock.shutdown(socket.SHUT_WR)
        assert d.closed()
    finally:
        d.finish()


# -- argument types ------------------------------------------------------------------------------

def test_wrong_arguments_are_refused() -> None:
    a, b = socket.socketpair()
    try:
        fd = a.fileno()
        for args, error in [(("3", FLAGS, 1, 1), TypeError), ((fd, FLAGS, 1.5, 1), TypeError),
                            ((fd, FLAGS, 1), TypeError), ((fd, "x", 1, 1), TypeError),
                            ((-1, FLAGS, 1, 1), ValueError), ((fd, FLAGS, 0, 1), ValueError),
                            ((fd, FLAGS, 1, -1), ValueError)]:
            with pytest.raises(error):
                Session(*args)
        session = Session(fd, FLAGS, 1024, 1024)
        for bad in ("text", 5, [b"x"]):
            with pytest.raises(TypeError):
                session.next(bad)
        with pytest.raises(TypeError):
            session.next(b"", b"")
        with pytest.raises(TypeError):
            session.macro(b"i")
        assert session.macro("i") is None and session.client == ("", "", "") and session.helo == ""
    finally:
        a.close()
        b.close()


# -- review findings -----------------------------------------------------------------------------

def test_a_reply_text_goes_only_with_an_action_of_its_class() -> None:
    """As libmilter: a 5xx text with a reject, a 4xx text with a tempfail; otherwise the bare
    action (Postfix then says its own), and never more than 980 characters of text."""
    from stronghold.transaction import REJECT, TEMPFAIL, Answer
    assert nativemilter.pack(Answer(REJECT, ("550", "5.7.1", "blocked"))) == packet(b"y", b"550 5.7.1 blocked\0")
    assert nativemilter.pack(Answer(TEMPFAIL, ("451", "4.7.1", "later"))) == packet(b"y", b"451 4.7.1 later\0")
    assert nativemilter.pack(Answer(REJECT, ("451", "4.7.1", "later"))) == packet(b"r")
    assert nativemilter.pack(Answer(TEMPFAIL, ("554", "5.7.1", "no"))) == packet(b"t")
    long = nativemilter.pack(Answer(REJECT, ("550", "5.7.1", "x" * 5000)))
    assert long[4:5] == b"y" and len(long) == 4 + 1 + nativemilter.MAX_REPLY + 1


def test_a_connection_thread_survives_a_failing_connection() -> None:
    """A connection whose handling raises is closed and logged; its thread serves the next one."""
    served: list[int] = []
    done = threading.Event()

    def handle(sock: socket.socket) -> None:
        served.append(threading.get_ident())
        if len(served) == 1:
            raise RuntimeError("a bug")
        sock.close()
        done.set()

    threads = nativemilter.ConnectionThreads(handle)
    pairs = [socket.socketpair() for _ in range(2)]
    threads.serve(pairs[0][0])
    for _ in range(100):  # the first connection over: its thread is idle again
        if threads.idle:
            break
        threading.Event().wait(0.02)
    threads.serve(pairs[1][0])
    assert done.wait(WAIT)
    threads.close()
    assert len(threads.threads) == 1 and served[0] == served[1]
    assert pairs[0][0].fileno() == -1  # the failed connection's socket was closed
    for a, b in pairs:
        a.close()
        b.close()


def test_a_session_is_read_by_one_thread_at_a_time() -> None:
    """While next() waits on the MTA without the GIL, another thread's macro(), client or helo
    would read buffers next() may be growing: they refuse."""
    ours, theirs = socket.socketpair()
    _timeouts(ours, WAIT)
    session = Session(ours.fileno(), FLAGS, 1 << 20, 1 << 20)
    waiting = threading.Thread(target=session.next)
    waiting.start()
    try:
        for _ in range(200):
            try:
                session.macro("i")
            except RuntimeError:
                break
            threading.Event().wait(0.01)
        else:
            pytest.fail("macro() answered while next() was running")
        with pytest.raises(RuntimeError):
            _ = session.client
        with pytest.raises(RuntimeError):
            _ = session.helo
    finally:
        theirs.close()  # next() sees the end and returns
        waiting.join(WAIT)
        ours.close()
    assert session.macro("i") is None


def test_a_session_without_its_socket_refuses_and_is_set_up_once() -> None:
    bare = Session.__new__(Session)
    with pytest.raises(RuntimeError, match="not set up"):
        bare.next()
    ours, theirs = socket.socketpair()
    session = Session(ours.fileno(), FLAGS, 1 << 20, 1 << 20)
    with pytest.raises(RuntimeError, match="already"):
        session.__init__(theirs.fileno(), FLAGS, 1 << 20, 1 << 20)
    ours.close()
    theirs.close()
