"""The milter in a real Postfix with real clamd: what senders and recipients see, with each
protocol engine (native: the protocol in C; libmilter: pymilter)."""

from __future__ import annotations

import email.header
import re
import shutil
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import Clamd, wait_for
from stronghold.classifier import Model
from stronghold.store import entries, messagelog
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files, dns_settings, shared_tmpdir
from tests.e2e import mail

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stack's model is trained on the corpus


@pytest.fixture(scope="module", params=["native", "libmilter"])
def stack(request: pytest.FixtureRequest, models_dir: Path, clamd: Clamd, test_dns) -> Iterator[Stack]:
    """The shared stack's setup, once per protocol engine."""
    home = shared_tmpdir("stronghold-stack-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}",
              milter_engine=request.param, **dns_settings(test_dns)).start()
    s.milter.wait_log(f"{request.param} protocol engine")
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def _by_id(tid: str):
    return lambda m: f"X-Test-Id: {tid}".encode() in m.data


def _log_rows(stack: Stack, address: str) -> list:
    with stack.store.session() as s:
        rows = messagelog.recent(s, messagelog.LogFilter(addresses=(address,)))
        for r in rows:
            _ = r.recipients
        return rows


def _add(stack: Stack, owner: str | None, kind: str, pattern: str) -> None:
    with stack.store.session() as s:
        entries.add_entry(s, owner, kind, pattern)


def test_ham_from_corpus_is_delivered_with_score_headers(stack: Stack, corpus, model: Model) -> None:
    path = next(p for p in corpus_files(corpus, "ham")
                if model.score(tokenize(p.read_bytes())).probability < 0.1)
    tid, data = mail.from_file(path)
    refused = mail.send(stack.postfix.port, "list@lists.example", ["alice@example.com"], data)
    assert refused == {}
    got = stack.sink.wait_for(_by_id(tid))
    assert len(got) == 1 and got[0].recipients == ["alice@example.com"]
    h = mail.headers(got[0].data)
    assert h.get_all("X-Spam-Flag") == ["NO"]
    assert float(h["X-Spam-Score"]) < 0.1
    assert "action=accept" in h["X-Spam-Status"]


def test_spam_is_tagged_not_rejected_by_default(stack: Stack, corpus, model: Model) -> None:
    """Spam goes to Junk (tagged), whatever its score; only the tag band's edge decides."""
    spam = corpus_files(corpus, "spam")
    scored = [(model.score(tokenize(p.read_bytes())).probability, p) for p in spam]
    high = next(p for s, p in scored if s >= 0.9999)
    middle = sorted((abs(s - model.spam_threshold), p) for s, p in scored if s < 0.999)[:6]
    assert middle, "no corpus spam scores near the threshold"
    tagged = 0
    for path in [high] + [p for _, p in middle]:
        tid, data = mail.from_file(path)
        assert mail.send(stack.postfix.port, "promo@spam.example", ["bob@example.com"], data) == {}
        h = mail.headers(stack.sink.wait_for(_by_id(tid))[0].data)
        score, threshold = float(h["X-Spam-Score"]), model.spam_threshold
        assert (h["X-Spam-Flag"] == "YES") == (score >= threshold)
        subject = str(email.header.make_header(email.header.decode_header(h["Subject"])))
        assert subject.startswith("[SPAM]") == (score >= threshold)
        assert (path is not high) or h["X-Spam-Flag"] == "YES"
        tagged += h["X-Spam-Flag"] == "YES"
    assert tagged >= 2


def test_virus_refused_even_when_sender_is_allow_listed(stack: Stack) -> None:
    _add(stack, "vic@example.com", "allow", "friend@trusted.example")
    tid, data = mail.with_eicar(sender="friend@trusted.example")
    with pytest.raises(smtplib.SMTPDataError) as err:
        mail.send(stack.postfix.port, "friend@trusted.example", ["vic@example.com"], data)
    assert err.value.smtp_code == 554
    assert b"Stronghold.Test.EICAR" in err.value.smtp_error
    assert not stack.sink.wait_for(_by_id(tid), timeout=1)


def test_block_listed_sender_refused_for_that_recipient_only(stack: Stack) -> None:
    _add(stack, "dave@example.com", "block", "@pest.example")
    tid, data = mail.simple(sender="noisy@pest.example")
    refused = mail.send(stack.postfix.port, "noisy@pest.example",
                        ["dave@example.com", "erin@example.com"], data)
    assert refused["dave@example.com"][0] == 550
    got = stack.sink.wait_for(_by_id(tid))
    assert [m.recipients for m in got] == [["erin@example.com"]]
    wait_for(lambda: any(r.category == "blocked" and r.sender == "noisy@pest.example"
                         for r in _log_rows(stack, "dave@example.com")), 10, "the RCPT-time block in the log")


def test_allow_listed_sender_gets_spammy_message_through(stack: Stack, corpus, model: Model) -> None:
    spam = next(p for p in corpus_files(corpus, "spam")
                if model.score(tokenize(p.read_bytes())).probability >= 0.999)
    _add(stack, "frank@example.com", "allow", "*.newsletters.example")
    tid, data = mail.from_file(spam)
    assert mail.send(stack.postfix.port, "weekly@mail.newsletters.example", ["frank@example.com"], data) == {}
    h = mail.headers(stack.sink.wait_for(_by_id(tid))[0].data)
    assert h["X-Spam-Flag"] == "NO"
    assert "allow=match" in h["X-Spam-Status"]


def test_forged_verdict_headers_are_removed(stack: Stack) -> None:
    """(Every other X-Spam-* name: tests/e2e/test_outcomes_postfix.py.)"""
    tid, data = mail.simple(extra="X-Spam-Flag: NO\r\nX-Spam-Score: -100\r\nX-Spam-Status: No, forged\r\n")
    assert mail.send(stack.postfix.port, "carol@sender.example", ["gina@example.com"], data) == {}
    h = mail.headers(stack.sink.wait_for(_by_id(tid))[0].data)
    assert len(h.get_all("X-Spam-Flag")) == 1
    assert len(h.get_all("X-Spam-Score")) == 1 and h["X-Spam-Score"] != "-100"
    assert "forged" not in h["X-Spam-Status"]


def test_header_from_block_after_data_drops_only_that_recipient(stack: Stack) -> None:
    _add(stack, "hank@example.com", "block", "boss@annoying.example")
    tid, data = mail.simple(sender="boss@annoying.example")
    assert mail.send(stack.postfix.port, "bounces@relay.example",
                     ["hank@example.com", "iris@example.com"], data) == {}
    got = stack.sink.wait_for(_by_id(tid))
    assert [m.recipients for m in got] == [["iris@example.com"]]
    wait_for(lambda: any(r.recipients[0].category == "blocked" for r in _log_rows(stack, "hank@example.com")
                         if r.subject == "Lunch on Thursday"), 10, "the header-From block in the log")
    tid, data = mail.simple(sender="boss@annoying.example")
    with pytest.raises(smtplib.SMTPDataError) as err:
        mail.send(stack.postfix.port, "bounces@relay.example", ["hank@example.com"], data)
    assert err.value.smtp_code == 550


def test_another_form_of_a_recipient_gets_that_recipients_verdict(stack: Stack) -> None:
    """Postfix delivers "jack"@example.com. and Jack@ to jack@: each is jack, with jack's lists,
    and a copy jack does not get is taken from every form he was named in."""
    _add(stack, "jack@example.com", "block", "boss@pushy.example")
    tid, data = mail.simple(sender="boss@pushy.example")
    assert mail.send(stack.postfix.port, "bounces@relay.example",
                     ["Jack@example.com", "jack@example.com", "iris@example.com"], data) == {}
    assert [m.recipients for m in stack.sink.wait_for(_by_id(tid))] == [["iris@example.com"]]
    for form in ('"jack"@example.com', "jack@example.com.", '"Jack"@EXAMPLE.com.'):
        tid, data = mail.simple(sender="boss@pushy.example")
        with pytest.raises(smtplib.SMTPDataError) as err:
            mail.send(stack.postfix.port, "bounces@relay.example", [form], data)
        assert err.value.smtp_code == 550, form
    _add(stack, "jack@example.com", "block", "@bulk.example")  # the envelope sender's domain, at RCPT
    tid, data = mail.simple(sender="news@elsewhere.example")
    refused = mail.send(stack.postfix.port, '"news"@bulk.example', ['"jack"@example.com', "iris@example.com"], data)
    assert list(refused) == ['"jack"@example.com'] and refused['"jack"@example.com'][0] == 550


def test_malformed_mime_is_delivered_not_lost(stack: Stack) -> None:
    raw = (b"From: x@odd.example\r\nSubject: =?bogus-charset?B?!!!?=\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n"
           b"--never-closed\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n%%%not base64%%%\r\n\x00\xff\xfe binary\r\n")
    tid, data = mail.tagged(raw)
    assert mail.send(stack.postfix.port, "x@odd.example", ["jane@example.com"], data) == {}
    h = mail.headers(stack.sink.wait_for(_by_id(tid))[0].data)
    # delivered after a full check: scored by the classifier, not waved through unparsed
    assert re.search(r"\bscore=[01]\.\d{4}\b", h["X-Spam-Status"]) and "classifier=" in h["X-Spam-Status"]
    # and the parser saw what was wrong with it (its defects became features of the logged message)
    wait_for(lambda: _malformed_row(stack) is not None, 10, "the malformed message in the log")
    row = _malformed_row(stack)
    assert row is not None
    assert {"defect:bad-base64", "defect:CloseBoundaryNotFoundDefect"} <= messagelog.unpack_tokens(row.tokens)


def test_codec_names_that_are_no_charset_are_delivered_scored_and_logged(stack: Stack) -> None:
    """Charsets ``undefined`` and ``idna`` (Python codecs that raise UnicodeError on any input) in
    the Subject and the body: the parser raised, and the milter tempfailed the message on every
    retry without a log line.  Now: read as unknown charsets, scored, delivered, logged."""
    raw = (b"From: y@odd.example\r\nSubject: =?undefined?Q?quarterly_figures?=\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=idna\r\n\r\nxn-- the quarterly figures\r\n")
    tid, data = mail.tagged(raw)
    assert mail.send(stack.postfix.port, "y@odd.example", ["nina@example.com"], data) == {}
    h = mail.headers(stack.sink.wait_for(_by_id(tid))[0].data)
    assert re.search(r"\bscore=[01]\.\d{4}\b", h["X-Spam-Status"]) and "classifier=" in h["X-Spam-Status"]
    stack.milter.wait_log("to=<nina@example.com>")
    wait_for(lambda: _log_rows(stack, "nina@example.com"), 10, "the log row")
    row = _log_rows(stack, "nina@example.com")[0]
    assert row.subject == "quarterly figures"
    assert "defect:body-charset" in messagelog.unpack_tokens(row.tokens)


def _smtp(port: int, commands: list[bytes]) -> list[bytes]:
    """Raw SMTP (smtplib will not send 8-bit addresses without SMTPUTF8): the reply to each."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock, sock.makefile("rb") as replies:
        def reply() -> bytes:
            lines = [replies.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(replies.readline())
            return b"".join(lines)
        answers = [reply()]
        for command in commands:
            sock.sendall(command)
            answers.append(reply())
        return answers


def test_eight_bit_envelope_addresses_are_logged_readable(stack: Stack) -> None:
    """Postfix passes an 8-bit MAIL FROM / RCPT TO without SMTPUTF8 as it came: the engines gave
    it to the store with surrogate escapes, the database driver raised, and that message's log
    row and every other row of the same write batch were lost without a word."""
    tid, data = mail.simple(subject="eight-bit envelope")
    answers = _smtp(stack.postfix.port, [b"EHLO client.example\r\n", b"MAIL FROM:<caf\xe9@odd.example>\r\n",
                                         b"RCPT TO:<quinn@example.com>\r\n", b"DATA\r\n", data + b".\r\n",
                                         b"QUIT\r\n"])
    assert answers[5].startswith(b"250 "), answers
    stack.sink.wait_for(_by_id(tid))
    wait_for(lambda: _log_rows(stack, "quinn@example.com"), 10, "the log row")
    assert [r.sender for r in _log_rows(stack, "quinn@example.com")] == ["caf\u00e9@odd.example"]  # Latin-1 read


def _malformed_row(stack: Stack):
    return next((r for r in _log_rows(stack, "jane@example.com") if r.sender == "x@odd.example"), None)


def test_oversize_message_is_refused_by_default(stack: Stack) -> None:
    """Past max_message_bytes nothing is delivered unscanned: 552 (oversize_action = reject)."""
    body = ("All the quarterly figures are below.\n" + "0123456789 " * 300_000)[:3_000_000]
    tid, data = mail.simple(body=body)
    assert len(data) > 2_000_000  # the stack's max_message_bytes
    with pytest.raises(smtplib.SMTPDataError) as refused:
        mail.send(stack.postfix.port, "carol@sender.example", ["kim@example.com"], data)
    assert refused.value.smtp_code == 552
    assert not [m for m in stack.sink.messages if f"X-Test-Id: {tid}".encode() in m.data]


def test_every_message_has_one_log_line(stack: Stack) -> None:
    tid, data = mail.simple(subject="log line check")
    mail.send(stack.postfix.port, "carol@sender.example", ["liam@example.com"], data)
    stack.sink.wait_for(_by_id(tid))
    stack.milter.wait_log("to=<liam@example.com>")
    line = next(ln for ln in stack.milter.log().splitlines() if "to=<liam@example.com>" in ln)
    for part in ("from=<carol@sender.example>", "score=", "verdict=clean", "action=accept", "ms="):
        assert part in line


def test_over_tcp_the_native_engine_listens_on_loopback_and_filters(models_dir: Path, clamd: Clamd) -> None:
    """milter_socket = inet:PORT@127.0.0.1: the native engine listens there (loopback only),
    and a message crosses Postfix with the verdict's headers added."""
    from devtools.localstack import free_port
    home = shared_tmpdir("stronghold-tcp-")
    port = free_port()
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}", milter_engine="native",
              milter_socket=f"inet:{port}@127.0.0.1").start()
    try:
        s.milter.wait_log("native protocol engine")
        with open("/proc/net/tcp") as table:  # listening (state 0A) on 127.0.0.1 only
            listening = [f[1] for f in (line.split() for line in table) if len(f) > 3 and f[3] == "0A"]
        assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening
        for n in range(3):
            tid, data = mail.simple(subject=f"over tcp {n}")
            assert mail.send(s.postfix.port, "carol@sender.example", ["tess@example.com"], data) == {}
            h = mail.headers(s.sink.wait_for(_by_id(tid))[0].data)
            assert h["X-Spam-Flag"] in ("YES", "NO") and h["X-Stronghold-Version"]
    finally:
        s.stop()
        shutil.rmtree(home, ignore_errors=True)
