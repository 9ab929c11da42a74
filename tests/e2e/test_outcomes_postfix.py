"""Every recipient its own outcome, through a real Postfix, clamd and the SMTP sink.

The sink records which recipients each delivered copy went to; the quarantine
and the message log are read from the stack's database.
"""

from __future__ import annotations

import email.header
import re
import shutil
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import Clamd, wait_for
from stronghold.classifier import Model
from stronghold.release import release
from stronghold.store import entries, messagelog, quarantine
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files, shared_tmpdir
from tests.e2e import mail
from tests.harness.imapbox import Mailboxes

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stack's model is trained on the corpus


@pytest.fixture(scope="module")
def quarantine_stack(models_dir: Path, clamd: Clamd) -> Iterator[Stack]:
    """An admin who chose to hold spam and viruses instead of tagging or rejecting them."""
    home = shared_tmpdir("stronghold-qstack-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}",
              spam_action="quarantine", spam_action_high="quarantine", virus_action="quarantine").start()
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def spam(corpus: Path, model: Model) -> bytes:
    """A corpus spam far above any threshold, with a plain From header."""
    path = next(p for p in corpus_files(corpus, "spam") if model.score(tokenize(p.read_bytes())).probability
                >= 0.9999)
    return path.read_bytes()


def with_header(raw: bytes, name: bytes, value: bytes) -> bytes:
    """``raw`` with every ``name`` header (and its folded lines) replaced by one with ``value``."""
    if raw.startswith(b"From ") and b"\n" in raw:
        raw = raw.split(b"\n", 1)[1]
    head, sep, body = raw.partition(b"\n\n")
    pattern = re.compile(rb"^" + re.escape(name) + rb":.*(\n[ \t].*)*\n?", re.IGNORECASE | re.MULTILINE)
    head = pattern.sub(b"", head + b"\n").rstrip(b"\n")
    return head + b"\n" + name + b": " + value + sep + body


def _by_id(tid: str):
    return lambda m: f"X-Test-Id: {tid}".encode() in m.data


def _add(stack: Stack, owner: str, kind: str, pattern: str) -> None:
    """Allow entries trusted without authentication: these tests are about who gets which copy
    (unsigned test mail); what authentication an allow entry needs is tested on its own."""
    with stack.store.session() as s:
        entries.add_entry(s, owner, kind, pattern, trust_unauthenticated=kind == "allow")


def _held(stack: Stack, *rcpts: str) -> list[quarantine.Held]:
    with stack.store.session() as s:
        return quarantine.find(s, recipients=list(rcpts))


def _logged(stack: Stack, subject: str, address: str) -> dict[str, str]:
    """{recipient: action} of the logged message to ``address`` with that subject."""
    with stack.store.session() as s:
        for row in messagelog.recent(s, messagelog.LogFilter(addresses=(address,))):
            if row.subject == subject:
                return {r.address: r.action for r in row.recipients}
    return {}


def test_allowing_recipient_gets_it_clean_the_other_in_the_quarantine(stack: Stack, spam: bytes) -> None:
    _add(stack, "m1@example.com", "allow", "promo@deals.example")
    tid, data = mail.tagged(with_header(spam, b"Subject", b"m1 m3 split"))
    assert mail.send(stack.postfix.port, "promo@deals.example", ["m1@example.com", "m3@example.com"],
                     data) == {}
    got = stack.sink.wait_for(_by_id(tid))
    assert [m.recipients for m in got] == [["m1@example.com"]]
    h = mail.headers(got[0].data)
    assert h.get_all("X-Spam-Flag") == ["NO"] and h["Subject"] == "m1 m3 split"
    assert "m3@" not in h["X-Spam-Status"] and "route=hold" not in h["X-Spam-Status"]
    held = _held(stack, "m1@example.com", "m3@example.com")
    assert [(x.recipient, x.category, x.subject) for x in held] == [("m3@example.com", "spam", "m1 m3 split")]
    with stack.store.session() as s:
        assert f"X-Test-Id: {tid}".encode() in quarantine.content(s, held[0].id)
    wait_for(lambda: _logged(stack, "m1 m3 split", "m3@example.com") ==
             {"m1@example.com": "accept", "m3@example.com": "quarantine"}, 10, "both outcomes in the log")
    assert not stack.sink.wait_for(lambda m: _by_id(tid)(m) and "m3@example.com" in m.recipients, timeout=0.5)


def test_three_recipients_three_outcomes(quarantine_stack: Stack, spam: bytes) -> None:
    st = quarantine_stack
    _add(st, "r1@example.com", "block", "@blocked.example")  # matches the header From only
    _add(st, "r3@example.com", "allow", "promo@deals.example")
    raw = with_header(with_header(spam, b"From", b"Deals <deals@blocked.example>"), b"Subject", b"three ways")
    tid, data = mail.tagged(raw)
    rcpts = ["r1@example.com", "r2@example.com", "r3@example.com"]
    assert mail.send(st.postfix.port, "promo@deals.example", rcpts, data) == {}
    got = st.sink.wait_for(_by_id(tid))
    assert [m.recipients for m in got] == [["r3@example.com"]]
    h = mail.headers(got[0].data)
    assert h["X-Spam-Flag"] == "NO" and not h["Subject"].startswith("[SPAM]")
    assert "block" not in h["X-Spam-Status"] and "r1@" not in h["X-Spam-Status"]
    assert [x.recipient for x in _held(st, *rcpts)] == ["r2@example.com"]
    wait_for(lambda: _logged(st, "three ways", "r1@example.com") ==
             {"r1@example.com": "reject", "r2@example.com": "quarantine", "r3@example.com": "accept"},
             10, "three outcomes in the log")


@pytest.mark.dovecot
def test_m1_inbox_clean_m3_held_then_released_once(dovecot_stack: Stack, mailboxes: Mailboxes, spam: bytes,
                                                   make_config) -> None:
    """The whole chain: milter -> LMTP -> Dovecot, then m3's release through the release listener."""
    st = dovecot_stack
    _add(st, "m1@example.com", "allow", "promo@deals.example")
    tid, data = mail.tagged(with_header(spam, b"Subject", b"split into Dovecot"))
    assert mail.send(st.postfix.port, "promo@deals.example", ["m1@example.com", "m3@example.com"], data) == {}
    found = mailboxes.wait_for("m1@example.com", tid)
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1
    assert mail.headers(found["INBOX"][0])["X-Spam-Flag"] == "NO"
    held = _held(st, "m1@example.com", "m3@example.com")
    assert [x.recipient for x in held] == ["m3@example.com"]  # stored before Postfix had our answer
    assert mailboxes.where("m3@example.com", tid) == {}
    cfg = make_config(release_smtp=f"127.0.0.1:{st.postfix.release_port}")
    release(cfg, st.store, held[0].id, "m3@example.com")
    found = mailboxes.wait_for("m3@example.com", tid)
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1
    assert mail.headers(found["INBOX"][0])["X-Spam-Flag"] is None  # delivered as received, not re-filtered
    assert len(mailboxes.where("m1@example.com", tid)["INBOX"]) == 1  # m1 got no second copy


def test_virus_held_for_every_recipient_nothing_delivered(quarantine_stack: Stack) -> None:
    st = quarantine_stack
    _add(st, "v1@example.com", "allow", "friend@trusted.example")  # a virus ignores allow lists
    tid, data = mail.with_eicar(sender="friend@trusted.example")
    assert mail.send(st.postfix.port, "friend@trusted.example", ["v1@example.com", "v2@example.com"],
                     data) == {}
    wait_for(lambda: "milter-discard" in st.postfix.log(), 10, "Postfix discarding after the hold")
    held = _held(st, "v1@example.com", "v2@example.com")
    assert sorted(x.recipient for x in held) == ["v1@example.com", "v2@example.com"]
    assert {x.category for x in held} == {"virus"}
    assert all((x.virus or "").startswith("Stronghold.Test.EICAR") for x in held)
    assert not st.sink.wait_for(_by_id(tid), timeout=1)


def test_quarantine_write_failing_tempfails_and_delivers_nothing(stack: Stack, spam: bytes) -> None:
    _add(stack, "q1@example.com", "allow", "promo@deals.example")
    tid, data = mail.tagged(with_header(spam, b"Subject", b"store down"))
    rcpts = ["q1@example.com", "q3@example.com"]
    with stack.store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER quarantine_read_only BEFORE INSERT ON quarantine_items "
                             "BEGIN SELECT RAISE(ABORT, 'quarantine is read-only'); END")
    try:
        with pytest.raises(smtplib.SMTPDataError) as err:
            mail.send(stack.postfix.port, "promo@deals.example", rcpts, data)
        assert err.value.smtp_code == 451 and b"4.7.1" in err.value.smtp_error
    finally:
        with stack.store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER quarantine_read_only")
    assert not stack.sink.wait_for(_by_id(tid), timeout=1)
    assert not _held(stack, *rcpts)
    # the sender's retry, once the store is back: delivered and held exactly once
    assert mail.send(stack.postfix.port, "promo@deals.example", rcpts, data) == {}
    assert [m.recipients for m in stack.sink.wait_for(_by_id(tid))] == [["q1@example.com"]]
    assert [x.recipient for x in _held(stack, *rcpts)] == ["q3@example.com"]


ISSUE = "Hosting from £6.50 per month über 日本"


@pytest.mark.parametrize("raw_subject, text", [
    (ISSUE.encode("utf-8"), ISSUE),
    ("Hosting from £6.50 per month über".encode("latin-1"), "Hosting from £6.50 per month über"),
    (b"=?iso-8859-1?q?Hosting_from_=A36.50_per_month_=FCber?=", "Hosting from £6.50 per month über"),
    (email.header.Header(ISSUE, "utf-8").encode().encode(), ISSUE),
    (email.header.Header("Привет, это реклама", "koi8-r").encode().encode(), "Привет, это реклама"),
    (("A very long subject line that goes on and on about hosting, " * 3 + ISSUE).encode(),
     "A very long subject line that goes on and on about hosting, " * 3 + ISSUE),
], ids=["utf8-raw", "latin1-raw", "rfc2047-latin1", "rfc2047-utf8", "rfc2047-koi8r", "long"])
def test_tagged_subjects_arrive_readable(stack: Stack, spam: bytes, raw_subject: bytes, text: str) -> None:
    tid, data = mail.tagged(with_header(spam, b"Subject", raw_subject))
    assert mail.send(stack.postfix.port, "promo@deals.example", ["sub@example.com"], data) == {}
    got = stack.sink.wait_for(_by_id(tid))
    lines = got[0].data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(b"subject:"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in (b" ", b"\t")), len(lines))
    folded = lines[start:end]
    assert all(line.isascii() and len(line) <= 78 for line in folded)  # encoded and folded, never raw 8-bit
    value = b"\r\n".join(folded)[len(b"Subject:"):].decode()
    shown = str(email.header.make_header(email.header.decode_header(value)))
    assert " ".join(shown.split()) == "[SPAM] " + " ".join(text.split())


def test_every_spam_header_from_outside_is_removed(stack: Stack) -> None:
    forged = ("X-Spam-Flag: NO\r\nX-Spam-Level: \r\nX-Spam-Report: all fine\r\n"
              "X-Spam-Checker-Version: SpamAssassin 3.4.6\r\nX-Spam-Whatever: forged\r\n"
              "x-spam-status: No, forged\r\nX-Stronghold-Verdict: clean\r\nX-Stronghold-Version: 9 forged\r\n")
    tid, data = mail.simple(extra=forged)
    assert mail.send(stack.postfix.port, "carol@sender.example", ["strip@example.com"], data) == {}
    h = mail.headers(stack.sink.wait_for(_by_id(tid))[0].data)
    names = sorted(n for n in h.keys() if n.lower().startswith(("x-spam-", "x-stronghold-")))
    assert names == ["X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Stronghold-Version"]
    assert "forged" not in h["X-Spam-Status"] and "forged" not in h["X-Stronghold-Version"]
