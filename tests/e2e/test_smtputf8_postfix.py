"""SMTPUTF8 mail (UTF-8 envelope addresses, RFC 6531) through a real Postfix that offers it, as
Postfix does by default (the shared stack turns it off): held, then released to its recipient."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import Clamd
from stronghold.classifier import Model
from stronghold.release import release
from stronghold.store import entries, quarantine
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files, shared_tmpdir
from tests.e2e import mail
from tests.e2e.test_milter_postfix import _smtp

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stack's model is trained on the corpus

SENDER, RCPT = "jörg@bücher.example", "ünï@example.com"


@pytest.fixture(scope="module")
def utf8_stack(models_dir: Path, clamd: Clamd) -> Iterator[Stack]:
    """Spam held (quarantine); Postfix with smtputf8_enable = yes."""
    home = shared_tmpdir("stronghold-utf8-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}",
              spam_action="quarantine", spam_action_high="quarantine")
    s.postfix.extra = {"smtputf8_enable": "yes"}
    s.start()
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def test_held_copy_with_utf8_envelope_is_released_to_its_recipient(utf8_stack: Stack, corpus, model: Model,
                                                                    make_config) -> None:
    """smtp_send spoke ASCII only: releasing a copy held for ünï@ (or from jörg@) raised
    UnicodeEncodeError out of release(), past its refusal handling, and the item stayed claimed
    as released, unconfirmed and undelivered (the user could not try again)."""
    st = utf8_stack
    path = next(p for p in corpus_files(corpus, "spam") if model.score(tokenize(p.read_bytes())).probability >= 0.999)
    tid, data = mail.tagged(path.read_bytes())
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    answers = _smtp(st.postfix.port, [b"EHLO client.example\r\n", f"MAIL FROM:<{SENDER}> SMTPUTF8\r\n".encode(),
                                      f"RCPT TO:<{RCPT}>\r\n".encode(), b"DATA\r\n", data + b".\r\n", b"QUIT\r\n"])
    assert answers[5].startswith(b"250 "), answers
    with st.store.session() as s:
        held = quarantine.find(s, recipients=[RCPT])
    assert [(x.sender, x.recipient) for x in held] == [(SENDER, RCPT)]
    assert not st.sink.wait_for(lambda m: tid.encode() in m.data, timeout=0.5)
    cfg = make_config(release_smtp=f"127.0.0.1:{st.postfix.release_port}")
    release(cfg, st.store, held[0].id, RCPT)
    got = st.sink.wait_for(lambda m: tid.encode() in m.data)
    assert [(m.sender, m.recipients) for m in got] == [(SENDER, [RCPT])]
    with st.store.session() as s:
        assert quarantine.get(s, held[0].id).delivered is not None


def test_a_blocked_domain_holds_for_a_utf8_local_part(utf8_stack: Stack) -> None:
    """A sender whose local part is outside ASCII (jörg@, SMTPUTF8) was never compared with the
    lists (``sender_addresses`` skipped every address that does not normalize), so a block of
    @bücher.example, or a global block of a spammer's domain, let jörg@bücher.example through."""
    st = utf8_stack
    with st.store.session() as s:
        entries.add_entry(s, "vera@example.com", "block", "@bücher.example")
        entries.add_entry(s, "walt@example.com", "block", "*.spam-domain.example")
    tid, data = mail.simple(sender="news@elsewhere.example", subject="Angebot")
    answers = _smtp(st.postfix.port, [b"EHLO client.example\r\n", f"MAIL FROM:<{SENDER}> SMTPUTF8\r\n".encode(),
                                      b"RCPT TO:<vera@example.com>\r\n", b"RCPT TO:<xena@example.com>\r\n",
                                      b"DATA\r\n", data + b".\r\n", b"QUIT\r\n"])
    assert answers[3].startswith(b"550 ") and answers[4].startswith(b"250 "), answers  # at RCPT, by the envelope
    assert [m.recipients for m in st.sink.wait_for(lambda m: tid.encode() in m.data)] == [["xena@example.com"]]
    tid, data = mail.simple(sender="ärger@mail.spam-domain.example", subject="Angebot")
    answers = _smtp(st.postfix.port, [b"EHLO client.example\r\n", b"MAIL FROM:<bounce@relay.example>\r\n",
                                      b"RCPT TO:<walt@example.com>\r\n", b"RCPT TO:<xena@example.com>\r\n",
                                      b"DATA\r\n", data + b".\r\n", b"QUIT\r\n"])
    assert answers[6].startswith(b"250 "), answers  # after DATA, by the header From: walt's copy dropped
    assert [m.recipients for m in st.sink.wait_for(lambda m: tid.encode() in m.data)] == [["xena@example.com"]]
