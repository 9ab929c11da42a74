"""An IMAP move learns the message the milter scored, not the copy as delivered: Postfix + the milter
deliver over LMTP into a Dovecot whose IMAPSieve hook runs `stronghold learn`; the user moves the
delivered message into Junk; the ledger's features are the message log's, and the same message
marked on the web is the same ledger row."""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localdovecot import JUNK, Dovecot
from devtools.localstack import Clamd, wait_for
from stronghold.feedback import record_pending
from stronghold.store import accounts, ledger, messagelog
from stronghold.store.tables import LearnedMessage, MessageRow
from tests.conftest import ROOT, Stack, dns_settings, shared_tmpdir
from tests.e2e import mail
from tests.harness.dnsserver import LoopbackDns
from tests.harness.imapbox import Mailboxes

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.dovecot, pytest.mark.corpus]
USER = "reader@example.com"
AUTHSERV_ID = "mx.stronghold.test"


@pytest.fixture(scope="module")
def learning_stack(models_dir: Path, clamd: Clamd, test_dns: LoopbackDns) -> Iterator[Stack]:
    """Postfix + milter delivering into a Dovecot with the learn hook, one SQLite store for both; the
    milter checks every message's authentication, so it adds its Authentication-Results."""
    home = shared_tmpdir("stronghold-imapdelivered-")
    url = f"sqlite:///{home / 'store.db'}"
    server = Dovecot(home / "dovecot", {USER: secrets.token_urlsafe(12)},
                     learn_command=(sys.executable, "-m", "stronghold.cli"),
                     learn_env={"PYTHONPATH": str(ROOT), "STRONGHOLD_DATABASE_URL": url,
                                "STRONGHOLD_CLAMD_SOCKET": "none", "STRONGHOLD_DATA_DIR": str(home / "data"),
                                "STRONGHOLD_AUTHSERV_ID": AUTHSERV_ID})
    server.start()
    stack = Stack(home / "stack", models_dir, clamd.address, url, dovecot=server, authserv_id=AUTHSERV_ID,
                  dmarc_every_message=True, **dns_settings(test_dns)).start()
    yield stack
    stack.stop()
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


def _ledger(stack: Stack) -> list[tuple[str, str, set[str]]]:
    """(source, who, features) of each shared ledger row."""
    with stack.store.session() as s:
        return [(r.source, r.who, messagelog.unpack_tokens(r.tokens)) for r in ledger.rows(s)]


def _logged(stack: Stack) -> list[tuple[int, set[str]]]:
    """(id, features) of each message log row."""
    with stack.store.session() as s:
        return [(m.id, messagelog.unpack_tokens(m.tokens)) for m in s.query(MessageRow)]


def test_an_imap_move_of_a_delivered_message_learns_what_the_milter_scored(learning_stack: Stack) -> None:
    stack = learning_stack
    assert stack.dovecot is not None
    with stack.store.session() as s:
        user = accounts.add_user(s, USER, "a long enough password")
        accounts.assign_address(s, user, USER)
        s.flush()
        user_id = user.id
    tid, data = mail.simple()
    assert mail.send(stack.postfix.port, "carol@sender.example", [USER], data) == {}
    boxes = Mailboxes(stack.dovecot.imap_port, stack.dovecot.users)
    delivered = boxes.wait_for(USER, tid)["INBOX"][0]
    top = mail.headers(delivered)
    # as delivered: Dovecot's block, our Authentication-Results, Postfix's Received, our verdict
    assert top["Delivered-To"] and top["X-Spam-Flag"] == "NO" and top["X-Stronghold-Version"]
    assert top["Authentication-Results"].startswith(AUTHSERV_ID + ";") and len(top.get_all("Received")) == 2
    wait_for(lambda: _logged(stack), 20, "the message log's row")  # the milter writes it in batches
    message_id, logged_features = _logged(stack)[0]
    assert not any(t.startswith(("header:x-spam", "header:x-stronghold", "header:delivered-to"))
                   for t in logged_features)

    client = boxes.connect(USER)
    try:
        client.select("INBOX")
        uid = client.uid("SEARCH", "HEADER", "X-Test-Id", tid)[1][0].split()[-1]
        assert client.uid("MOVE", uid, f'"{JUNK}"')[0] == "OK"  # the user: "this is spam"
    finally:
        client.logout()
    wait_for(lambda: _ledger(stack), 60, "the ledger row of the move into Junk")
    [(source, who, learned)] = _ledger(stack)
    assert (source, who) == ("imap", USER)
    assert (learned - logged_features, logged_features - learned) == (set(), set())

    with stack.store.session() as s:  # the same message marked spam on the web
        messagelog.set_feedback(s, message_id, user_id, True)
    _, _, change = record_pending(stack.store)
    assert (change.new, change.same) == (0, 1)
    with stack.store.session() as s:
        assert s.query(LearnedMessage).filter(LearnedMessage.scope == ledger.SHARED).count() == 1
    assert ": Error:" not in stack.dovecot.log(), stack.dovecot.log()[-2000:]
