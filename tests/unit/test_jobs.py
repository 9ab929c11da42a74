"""`stronghold jobs`: the hourly timer's work, each job on its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import update

from stronghold.cli import main
from stronghold.message import parse
from stronghold.store import accounts, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.store.tables import MessageRow, QuarantineItem
from stronghold.verdict import Action, Category, Envelope, Verdict

DAY = 86400.0


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STRONGHOLD_DOVECOT_CONFIG", str(tmp_path / "no-dovecot.conf"))
    store = Store(f"sqlite:///{tmp_path / 'data' / 'stronghold.db'}")
    store.upgrade()
    return store


def _age_log_and_quarantine(store: Store, ages_days: list[float]) -> None:
    verdict = Verdict(Action.ACCEPT, Category.CLEAN, 0.1, 0.9, None, (), ())
    now = time.time()
    with store.session() as s:
        for age in ages_days:
            messagelog.record(s, Envelope("a@x.example", ("b@example.com",)), parse(b"Subject: x\n\nx\n"),
                              verdict, ts=now - age * DAY)
            [item] = quarantine.hold(s, f"Subject: {age}\n\nx\n".encode(), recipients=["b@example.com"],
                                     sender="a@x.example", subject=str(age), queue_id="Q", score=0.99,
                                     category="spam", reason="spam", trace="", virus=None)
            s.execute(update(QuarantineItem).where(QuarantineItem.id == item).values(ts=now - age * DAY))


def test_retention_jobs_delete_only_what_is_older(env: Store, capsys: pytest.CaptureFixture[str]) -> None:
    _age_log_and_quarantine(env, [40, 31, 29, 1])
    assert main(["jobs", "--only", "message-log", "--only", "quarantine"]) == 0
    out = capsys.readouterr().out
    assert "message-log: 2 entries older than 30 days deleted" in out
    assert "quarantine: 2 held messages older than 30 days deleted" in out
    with env.session() as s:
        assert s.query(MessageRow).count() == 2 and s.query(QuarantineItem).count() == 2
    assert main(["jobs", "--only", "message-log"]) == 0  # idempotent
    assert "0 entries" in capsys.readouterr().out


def test_every_job_runs_and_a_failing_one_fails_the_run(env: Store, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _age_log_and_quarantine(env, [40])
    monkeypatch.setenv("STRONGHOLD_RELEASE_SMTP", "127.0.0.1:1")  # digests cannot be sent
    monkeypatch.setenv("STRONGHOLD_QUARANTINE_RETENTION_DAYS", "0")
    assert main(["jobs"]) == 0  # no user is due a digest: nothing to send, nothing fails
    out = capsys.readouterr().out
    assert "message-log: 1 entries" in out and "quarantine: kept" in out
    assert "junk: skipped: no Dovecot here" in out and "digest: 0 sent" in out
    assert main(["jobs", "--only", "nonsense"]) == 2
    with env.session() as s:  # b@example.com's owner is now due a digest that cannot be sent
        accounts.assign_address(s, accounts.add_user(s, "b@example.com", "a long enough passphrase"),
                                "b@example.com")
        quarantine.hold(s, b"Subject: new\n\nx\n", recipients=["b@example.com"], sender="a@x.example",
                        subject="new", queue_id="Q2", score=0.99, category="spam", reason="spam", trace="",
                        virus=None)
    assert main(["jobs"]) == 1
    out = capsys.readouterr().out
    assert "digest: FAILED: 0 sent, 1 failed" in out and "message-log: 0 entries" in out  # the others ran
