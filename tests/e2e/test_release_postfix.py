"""Release and digest through a real Postfix release listener into Dovecot, read back over IMAP."""

from __future__ import annotations

import email
import re
import shutil
from collections.abc import Iterator
from email.policy import default

import pytest

from devtools.localdovecot import Dovecot
from devtools.localstack import Postfix, free_port
from stronghold import digest
from stronghold.config import Config
from stronghold.release import ReleaseError, release
from stronghold.store import accounts, quarantine
from stronghold.store.db import Store
from tests.conftest import shared_tmpdir
from tests.e2e import mail
from tests.harness.imapbox import Mailboxes

pytestmark = [pytest.mark.postfix, pytest.mark.dovecot]


@pytest.fixture(scope="module")
def postfix(dovecot: Dovecot) -> Iterator[Postfix]:
    """Postfix delivering to the session's Dovecot; only its milter-less release listener is used."""
    home = shared_tmpdir("stronghold-release-")
    server = Postfix(home / "postfix", free_port(), lmtp=dovecot.lmtp_address, mailboxes=dovecot.addresses)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def cfg(make_config, postfix: Postfix) -> Config:
    return make_config(release_smtp=f"127.0.0.1:{postfix.release_port}", web_secret_key="e2e" * 20,
                       digest_sender="postmaster@example.com")


@pytest.fixture
def db(tmp_path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    yield store
    store.dispose()


def _flushed(postfix: Postfix, mailboxes: Mailboxes, user: str) -> None:
    """Send a marker after everything else and wait for it: what was queued before has arrived."""
    tid, data = mail.simple(subject="marker")
    assert mail.send(postfix.release_port, "marker@sender.example", [user], data) == {}
    mailboxes.wait_for(user, tid)


def test_released_copy_reaches_that_recipients_inbox_once(cfg: Config, db: Store, postfix: Postfix,
                                                          mailboxes: Mailboxes) -> None:
    tid, raw = mail.simple(sender="news@shop.example", subject="Your receipt",
                           extra="X-Spam-Flag: YES\r\nX-Spam-Score: 0.99\r\n")
    with db.session() as s:
        m1, m3 = quarantine.hold(s, raw, recipients=["m1@example.com", "m3@example.com"],
                                 sender="news@shop.example", subject="Your receipt", queue_id="QE2E",
                                 score=0.99, category="spam", reason="spam", trace="model", virus=None)
    held = release(cfg, db, m3, "m3@example.com")
    assert held.delivered is not None
    found = mailboxes.wait_for("m3@example.com", tid)
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1  # the forged flag did not file it into Junk
    h = mail.headers(found["INBOX"][0])
    assert h["X-Stronghold-Released"] == f"{m3} by m3@example.com" and h["X-Spam-Flag"] is None
    with pytest.raises(ReleaseError, match="already released"):
        release(cfg, db, m3, "m3@example.com")
    _flushed(postfix, mailboxes, "m3@example.com")
    _flushed(postfix, mailboxes, "m1@example.com")
    assert len(mailboxes.where("m3@example.com", tid)["INBOX"]) == 1
    assert mailboxes.where("m1@example.com", tid) == {}
    with db.session() as s:
        assert quarantine.get(s, m1).released is None


def test_digest_arrives_and_its_link_releases_once(cfg: Config, db: Store, postfix: Postfix,
                                                   mailboxes: Mailboxes) -> None:
    with db.session() as s:
        user = accounts.add_user(s, "m2@example.com", "long enough password")
        accounts.assign_address(s, user, "m2@example.com")
    tid, raw = mail.simple(sender="offers@shop.example", subject="Held for the digest")
    with db.session() as s:
        item = quarantine.hold(s, raw, recipients=["m2@example.com"], sender="offers@shop.example",
                               subject="Held for the digest", queue_id="QD2E", score=0.97, category="spam",
                               reason="spam", trace="model", virus=None)[0]
    assert [r.outcome for r in digest.run(cfg, db)] == ["sent"]

    def digest_mail() -> dict[str, list[bytes]]:
        return {name: [m for m in msgs if b"X-Stronghold-Digest: m2@example.com" in m
                       and b"Held for the digest" in m]
                for name, msgs in mailboxes.folders("m2@example.com").items()
                if any(b"Held for the digest" in m and b"X-Stronghold-Digest" in m for m in msgs)}
    found = mailboxes.wait_until("m2@example.com", digest_mail, 20, "the digest")
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1
    text = email.message_from_bytes(found["INBOX"][0], policy=default).get_body(("plain",)).get_content()
    tokens = re.findall(r"release: http://127\.0\.0\.1:8080/digest/release/(\S+)", text)
    assert len(tokens) == 1

    assert digest.redeem(cfg, db, tokens[0]).id == item
    assert list(mailboxes.wait_for("m2@example.com", tid)) == ["INBOX"]
    with pytest.raises(digest.DigestLinkError, match="already released"):
        digest.redeem(cfg, db, tokens[0])
    with pytest.raises(digest.DigestLinkError, match="not valid"):
        digest.redeem(cfg, db, tokens[0][:-3] + ("AAA" if tokens[0][-3:] != "AAA" else "BBB"))
    _flushed(postfix, mailboxes, "m2@example.com")
    assert len(mailboxes.where("m2@example.com", tid)["INBOX"]) == 1
