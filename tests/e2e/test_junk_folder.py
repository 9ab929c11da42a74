"""The Junk folder for real: Postfix + milter -> LMTP -> Dovecot + Sieve, read back over IMAP."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from stronghold import cli
from stronghold.classifier import Model
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files
from tests.e2e import mail
from tests.harness.imapbox import Mailboxes
from tests.harness.milterproc import write_config

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.dovecot, pytest.mark.corpus]

DAY = 86400


@pytest.fixture(scope="module")
def spam_path(corpus: Path, model: Model) -> Path:
    """A corpus spam the model is sure of (the stack tags every score at or above its threshold)."""
    return max(corpus_files(corpus, "spam")[:60],
               key=lambda p: model.score(tokenize(p.read_bytes())).probability)


def test_clean_mail_lands_in_inbox(dovecot_stack: Stack, mailboxes: Mailboxes) -> None:
    tid, data = mail.simple()
    assert mail.send(dovecot_stack.postfix.port, "carol@sender.example", ["m1@example.com"], data) == {}
    found = mailboxes.wait_for("m1@example.com", tid)
    assert list(found) == ["INBOX"] and len(found["INBOX"]) == 1
    assert mail.headers(found["INBOX"][0])["X-Spam-Flag"] == "NO"


def test_tagged_spam_lands_in_each_recipients_junk(dovecot_stack: Stack, mailboxes: Mailboxes,
                                                  spam_path: Path) -> None:
    tid, data = mail.from_file(spam_path)
    rcpts = ["m2@example.com", "m3@example.com"]
    assert mail.send(dovecot_stack.postfix.port, "promo@spam.example", rcpts, data) == {}
    for user in rcpts:
        found = mailboxes.wait_for(user, tid)
        assert list(found) == ["Junk"] and len(found["Junk"]) == 1, (user, list(found))
        h = mail.headers(found["Junk"][0])
        assert h["X-Spam-Flag"] == "YES" and h["Subject"].startswith("[SPAM]")


def test_forged_spam_flag_from_outside_does_not_file_ham_into_junk(dovecot_stack: Stack,
                                                                   mailboxes: Mailboxes) -> None:
    tid, data = mail.simple(extra="X-Spam-Flag: YES\r\n")
    assert mail.send(dovecot_stack.postfix.port, "carol@sender.example", ["m1@example.com"], data) == {}
    found = mailboxes.wait_for("m1@example.com", tid)
    assert list(found) == ["INBOX"]
    assert mail.headers(found["INBOX"][0]).get_all("X-Spam-Flag") == ["NO"]


def test_unknown_mailbox_is_refused_at_rcpt(dovecot_stack: Stack) -> None:
    _, data = mail.simple()
    refused = mail.send(dovecot_stack.postfix.port, "carol@sender.example",
                        ["m1@example.com", "nobody@example.com"], data)
    assert list(refused) == ["nobody@example.com"] and refused["nobody@example.com"][0] == 550


def test_release_listener_delivers_without_the_milter(dovecot_stack: Stack, mailboxes: Mailboxes,
                                                      spam_path: Path) -> None:
    """What the quarantine re-injects on release_port is delivered as it is: never filtered again."""
    tid, data = mail.from_file(spam_path)
    assert mail.send(dovecot_stack.postfix.release_port, "promo@spam.example", ["m3@example.com"],
                     data) == {}
    found = mailboxes.wait_for("m3@example.com", tid)
    assert list(found) == ["INBOX"]
    assert mail.headers(found["INBOX"][0])["X-Spam-Flag"] is None
    assert "postfix/release/smtpd" in dovecot_stack.postfix.log()


def test_postqueue_flush_works(dovecot_stack: Stack) -> None:
    out = subprocess.run(["postqueue", "-c", str(dovecot_stack.postfix.home), "-f"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def _subjects(mailboxes: Mailboxes, user: str, folder: str) -> list[str]:
    return sorted(str(mail.headers(m)["Subject"]) for m in mailboxes.folders(user)[folder])


def test_expiry_job_expunges_old_junk_and_keeps_the_rest(dovecot, mailboxes: Mailboxes,
                                                         tmp_path: Path, capsys) -> None:
    user, now = "m4@example.com", time.time()
    for folder, subject, age in (("Junk", "junk 40 days", 40), ("Junk", "junk 29 days", 29),
                                 ("Junk", "junk today", 0), ("Trash", "deleted today, sent 90 days ago", 90),
                                 ("INBOX", "inbox 40 days", 40)):
        raw = f"From: x@sender.example\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
        mailboxes.append(user, folder, raw, now - age * DAY)
    conf = write_config(tmp_path / "stronghold.toml", {"dovecot_config": str(dovecot.config_path),
                                                       "junk_retention_days": 30})

    assert cli.main(["--config", str(conf), "mailbox", "expire", "--dry-run"]) == 0
    assert "Junk: would expunge 1 message(s)" in capsys.readouterr().out
    assert "junk 40 days" in _subjects(mailboxes, user, "Junk")

    assert cli.main(["--config", str(conf), "mailbox", "expire"]) == 0
    assert "Junk: expunged 1 message(s)" in capsys.readouterr().out
    assert _subjects(mailboxes, user, "Junk") == ["junk 29 days", "junk today"]
    # Trash counts from when a message was put there (its save date), not from when it was sent.
    assert _subjects(mailboxes, user, "Trash") == ["deleted today, sent 90 days ago"]
    assert "inbox 40 days" in _subjects(mailboxes, user, "INBOX")


def test_expiry_job_reports_a_broken_dovecot_config(tmp_path: Path, capsys) -> None:
    conf = write_config(tmp_path / "stronghold.toml", {"dovecot_config": str(tmp_path / "missing.conf")})
    assert cli.main(["--config", str(conf), "mailbox", "expire"]) == 2
    assert "missing.conf not found" in capsys.readouterr().err


def test_expiry_skips_users_without_the_folder_but_fails_on_other_doveadm_errors(
        dovecot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stronghold import mailbox_expiry
    monkeypatch.setattr(mailbox_expiry, "RULES", (("NoSuchFolder", "before"),))
    done = mailbox_expiry.expire(dovecot.config_path, 30)
    assert [(e.folder, e.messages) for e in done] == [("NoSuchFolder", 0)]
    broken = tmp_path / "dovecot.conf"
    # doveadm exits 0 here, saying on stderr that it failed for every user
    broken.write_text(f"!include {dovecot.config_path}\nmail_location = nosuchdriver:~/x\n")
    with pytest.raises(mailbox_expiry.ExpiryError, match="Unknown mail storage driver"):
        mailbox_expiry.expire(broken, 30)
    # Dovecot not running (no auth socket in its base_dir)
    broken.write_text(f"!include {dovecot.config_path}\nbase_dir = {tmp_path / 'nothing'}\n")
    with pytest.raises(mailbox_expiry.ExpiryError, match="auth-userdb"):
        mailbox_expiry.expire(broken, 30)
