"""IMAP moves are feedback: a real Dovecot with IMAPSieve runs `stronghold learn` on moves into and
out of Junk (mail client actions over imaplib), and the ledger in PostgreSQL records them."""

from __future__ import annotations

import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localdovecot import JUNK, TRASH, Dovecot
from devtools.localstack import wait_for
from stronghold.store import ledger
from stronghold.store.db import Store
from stronghold.training import tokenize
from tests.conftest import ROOT, corpus_files, shared_tmpdir
from tests.harness.imapbox import Mailboxes
from tests.harness.postgres import PostgresCluster

USER = "reader@example.com"


@pytest.fixture(scope="module")
def learning_dovecot(postgres: PostgresCluster) -> Iterator[tuple[Dovecot, Store]]:
    url = postgres.create_database(f"imapfeedback_{secrets.token_hex(4)}")
    store = Store(url)
    store.upgrade()
    home = shared_tmpdir("stronghold-dovecot-learn-")
    server = Dovecot(home, {USER: secrets.token_urlsafe(12)},
                     learn_command=(sys.executable, "-m", "stronghold.cli"),
                     learn_env={"PYTHONPATH": str(ROOT), "STRONGHOLD_DATABASE_URL": url,
                                "STRONGHOLD_CLAMD_SOCKET": "none", "STRONGHOLD_DATA_DIR": str(home / "data")})
    server.start()
    yield server, store
    server.stop()
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)


def _label(store: Store, digest: str) -> tuple[bool | None, str, str] | None:
    with store.session() as s:
        rows = [r for r in ledger.rows(s) if r.content_hash == digest]
        return (rows[0].label, rows[0].source, rows[0].who) if rows else None


def _move(client, uid: bytes, folder: str) -> bytes:
    """UID MOVE; returns the message's UID in the target folder (from COPYUID)."""
    status, data = client.uid("MOVE", uid, f'"{folder}"')
    assert status == "OK", data
    for line in client.untagged_responses.pop("OK", []):
        found = re.search(rb"COPYUID \d+ \S+ (\d+)\]", line)
        if found:
            return found.group(1)
    raise AssertionError("the server sent no COPYUID")


@pytest.mark.corpus
@pytest.mark.dovecot
@pytest.mark.postgres
def test_moves_into_and_out_of_junk_are_feedback(learning_dovecot: tuple[Dovecot, Store], corpus: Path) -> None:
    server, store = learning_dovecot
    raw = corpus_files(corpus, "ham", "test")[5].read_bytes()
    digest = ledger.content_hash(tokenize(raw))
    client = Mailboxes(server.imap_port, server.users).connect(USER)
    try:
        client.create('"Archive"')
        assert client.append("INBOX", None, None, raw)[0] == "OK"
        assert _label(store, digest) is None  # arriving in the inbox says nothing
        client.select("INBOX")
        uid = client.uid("SEARCH", "ALL")[1][0].split()[-1]
        uid = _move(client, uid, JUNK)  # the user: "this is spam"
        wait_for(lambda: _label(store, digest) == (True, "imap", USER), 90, "spam from the move into Junk")
        client.select(f'"{JUNK}"')
        uid = _move(client, uid, "Archive")  # "not spam after all"
        wait_for(lambda: _label(store, digest) == (False, "imap", USER), 90, "ham from the move out of Junk")
        client.select('"Archive"')
        assert client.uid("COPY", uid, f'"{JUNK}"')[0] == "OK"  # a copy into Junk counts too
        wait_for(lambda: _label(store, digest) == (True, "imap", USER), 90, "spam from the copy into Junk")
        client.select(f'"{JUNK}"')
        junk_uid = client.uid("SEARCH", "ALL")[1][0].split()[-1]
        _move(client, junk_uid, TRASH)  # deleting from Junk is no opinion
        client.select("INBOX")  # a later, unrelated command: the hook had its chance to run
        assert _label(store, digest) == (True, "imap", USER)
    finally:
        client.logout()
    assert ": Error:" not in server.log(), server.log()[-2000:]
