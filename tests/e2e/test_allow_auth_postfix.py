"""Allow entries through a real Postfix: only an authenticated sender gets past the filter.

The milter resolves through the loopback DNS server of the tests; Postfix
hands it mail from 127.0.0.1, which the test domains' SPF records permit or
not (tests/harness/dnsserver.py).
"""

from __future__ import annotations

import shutil
import smtplib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

import pytest

from devtools.localstack import Clamd
from stronghold.classifier import Model
from stronghold.store import entries
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files, dns_settings, shared_tmpdir
from tests.e2e import mail
from tests.harness.dnsserver import LoopbackDns, sign

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stack's model is trained on the corpus
OUR_ID = "mx.stronghold.test"


@pytest.fixture(scope="module")
def auth_stack(models_dir: Path, clamd: Clamd, test_dns: LoopbackDns) -> Iterator[Stack]:
    """An admin who rejects spam at SMTP (not the default), so the reply says how mail was judged."""
    home = shared_tmpdir("stronghold-auth-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}", authserv_id=OUR_ID,
              spam_action="reject", spam_action_high="reject", **dns_settings(test_dns, timeout=1.0)).start()
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def spam_body(corpus: Path, model: Model) -> tuple[str, bytes]:
    """(Content-Type, body) of a single-part corpus spam that scores >= 0.999 under our headers."""
    for path in corpus_files(corpus, "spam"):
        original = BytesParser(policy=compat32).parsebytes(path.read_bytes())
        if original.is_multipart():
            continue
        ctype = original.get("Content-Type", "text/plain")
        body = original.get_payload(decode=False)
        if not isinstance(body, str) or original.get("Content-Transfer-Encoding"):
            continue
        raw = body.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if model.score(tokenize(_message("boss@trusted.example", ctype, raw))).probability >= 0.999:
            return ctype, raw
    pytest.fail("no single-part corpus spam scores >= 0.999")


def _message(frm: str, ctype: str, body: bytes, extra: str = "") -> bytes:
    tid = uuid.uuid4().hex
    head = (f"X-Test-Id: {tid}\r\nFrom: The Boss <{frm}>\r\nTo: m1@example.com\r\nSubject: this week\r\n"
            f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{tid}@trusted.example>\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\n\r\n")
    return head.encode() + body


def _tid(raw: bytes) -> str:
    return raw.split(b"X-Test-Id: ", 1)[1].split(b"\r\n", 1)[0].decode()


def _by_id(tid: str):
    return lambda m: f"X-Test-Id: {tid}".encode() in m.data


def _allow(stack: Stack, owner: str, pattern: str) -> int:
    with stack.store.session() as s:
        return entries.add_entry(s, owner, "allow", pattern).id


def _log_line(stack: Stack, tid_sender: str, rcpt: str) -> str:
    marker = f"from=<{tid_sender}> to=<{rcpt}>"
    stack.milter.wait_log(marker)
    return next(ln for ln in stack.milter.log().splitlines() if marker in ln)


def test_signed_mail_from_an_allow_listed_sender_is_allowed(auth_stack: Stack, test_dns: LoopbackDns,
                                                             spam_body: tuple[str, bytes]) -> None:
    _allow(auth_stack, "m1@example.com", "boss@trusted.example")
    raw = sign(_message("boss@trusted.example", *spam_body), "trusted.example", test_dns.keys)
    assert mail.send(auth_stack.postfix.port, "bounce@fail.example", ["m1@example.com"], raw) == {}
    got = auth_stack.sink.wait_for(_by_id(_tid(raw)))
    h = mail.headers(got[0].data)
    assert h["X-Spam-Flag"] == "NO" and "allow=match" in h["X-Spam-Status"]
    ours = [v for v in h.get_all("Authentication-Results") if v.startswith(OUR_ID)]
    assert len(ours) == 1 and "dkim=pass header.d=trusted.example" in ours[0]


@pytest.mark.parametrize("case", ["altered", "unsigned", "other-domain"])
def test_unauthenticated_from_is_scored_and_the_trace_says_why(auth_stack: Stack, test_dns: LoopbackDns,
                                                                spam_body: tuple[str, bytes], case: str) -> None:
    rcpt = f"m-{case}@example.com"
    entry = _allow(auth_stack, rcpt, "boss@trusted.example")
    raw = _message("boss@trusted.example", *spam_body)
    if case == "altered":
        raw = sign(raw, "trusted.example", test_dns.keys) + b"\r\nP.S. wire it today.\r\n"
        why = "spf=fail dkim=fail(trusted.example)"
    elif case == "other-domain":
        raw = sign(raw, "other.example", test_dns.keys)
        why = "spf=fail dkim=pass(other.example)"
    else:
        why = "spf=fail dkim=none"
    with pytest.raises(smtplib.SMTPDataError) as err:
        mail.send(auth_stack.postfix.port, "bounce@fail.example", [rcpt], raw)
    assert err.value.smtp_code == 550
    assert not auth_stack.sink.wait_for(_by_id(_tid(raw)), timeout=0.5)
    line = _log_line(auth_stack, "bounce@fail.example", rcpt)
    assert f"allow=skipped(#{entry} From boss@trusted.example not authenticated ({why}))" in line
    assert "verdict=spam" in line


def test_forged_envelope_sender_alone_is_scored(auth_stack: Stack, spam_body: tuple[str, bytes]) -> None:
    entry = _allow(auth_stack, "m2@example.com", "boss@softfail.example")
    raw = _message("someone@elsewhere.example", *spam_body)
    with pytest.raises(smtplib.SMTPDataError):
        mail.send(auth_stack.postfix.port, "boss@softfail.example", ["m2@example.com"], raw)
    line = _log_line(auth_stack, "boss@softfail.example", "m2@example.com")
    assert (f"allow=skipped(#{entry} envelope sender boss@softfail.example not authenticated "
            "(spf=softfail dkim=none))") in line
    # the envelope sender of a domain whose SPF permits this client does match
    _allow(auth_stack, "m3@example.com", "boss@trusted.example")
    raw = _message("someone@elsewhere.example", *spam_body)
    assert mail.send(auth_stack.postfix.port, "boss@trusted.example", ["m3@example.com"], raw) == {}
    assert mail.headers(auth_stack.sink.wait_for(_by_id(_tid(raw)))[0].data)["X-Spam-Flag"] == "NO"


def test_forged_authentication_results_with_our_id_is_removed_and_ignored(auth_stack: Stack) -> None:
    entry = _allow(auth_stack, "m4@example.com", "boss@trusted.example")
    forged = f"Authentication-Results: {OUR_ID}; spf=pass smtp.mailfrom=trusted.example; " \
             "dkim=pass header.d=trusted.example\r\nAuthentication-Results: elsewhere.example; dkim=none\r\n"
    raw = _message("boss@trusted.example", "text/plain", b"See you at the meeting.\r\n", extra=forged)
    assert mail.send(auth_stack.postfix.port, "bounce@fail.example", ["m4@example.com"], raw) == {}
    h = mail.headers(auth_stack.sink.wait_for(_by_id(_tid(raw)))[0].data)
    results = h.get_all("Authentication-Results")
    ours = [v for v in results if v.startswith(OUR_ID)]
    assert len(ours) == 1 and "dkim=none" in ours[0] and "spf=fail" in ours[0]  # ours, not the forged one
    assert any(v.startswith("elsewhere.example") for v in results)  # other ids are left alone
    line = _log_line(auth_stack, "bounce@fail.example", "m4@example.com")
    assert f"allow=skipped(#{entry} From boss@trusted.example not authenticated (spf=fail dkim=none))" in line


def test_a_forged_signature_domain_writes_nothing_in_our_results(auth_stack: Stack) -> None:
    """A d= holding text, not a domain, would have put "dmarc=pass" into our own header."""
    _allow(auth_stack, "m6@example.com", "boss@trusted.example")
    sig = ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=evil.example dmarc=pass\r\n"
           " header.from=trusted.example; s=sel; h=from; bh=AAAA; b=AAAA\r\n")
    raw = _message("boss@trusted.example", "text/plain", b"See you at the meeting.\r\n", extra=sig)
    assert mail.send(auth_stack.postfix.port, "bounce@fail.example", ["m6@example.com"], raw) == {}
    h = mail.headers(auth_stack.sink.wait_for(_by_id(_tid(raw)))[0].data)
    ours = [" ".join(v.split()) for v in h.get_all("Authentication-Results") if v.startswith(OUR_ID)]
    assert ours == [f"{OUR_ID}; spf=fail smtp.mailfrom=fail.example; dkim=none; "
                    "dmarc=fail header.from=trusted.example"]


def test_dns_down_mail_flows_and_entries_are_unauthenticated(auth_stack: Stack, test_dns: LoopbackDns) -> None:
    entry = _allow(auth_stack, "m5@example.com", "news@strict.example")  # names no earlier test resolved
    sent = [sign(_message("news@strict.example", "text/plain", f"Issue {n} of the newsletter.\r\n".encode()),
                 "strict.example", test_dns.keys) for n in range(3)]
    test_dns.zone.silent = True
    try:  # at once: each waits out its lookups' timeouts
        with ThreadPoolExecutor(len(sent)) as pool:
            refused = list(pool.map(lambda raw: mail.send(auth_stack.postfix.port, "news@strict.example",
                                                          ["m5@example.com"], raw), sent))
        assert refused == [{}] * len(sent)
    finally:
        test_dns.zone.silent = False
    for raw in sent:
        got = auth_stack.sink.wait_for(_by_id(_tid(raw)))
        assert len(got) == 1 and mail.headers(got[0].data)["X-Spam-Flag"] == "NO"
    auth_stack.milter.wait_log("to=<m5@example.com>")
    lines = [ln for ln in auth_stack.milter.log().splitlines() if "to=<m5@example.com>" in ln]
    assert len(lines) == 3
    for line in lines:
        assert f"allow=skipped(#{entry} " in line, line
        assert "news@strict.example not authenticated (spf=temperror dkim=temperror(strict.example)))" in line
