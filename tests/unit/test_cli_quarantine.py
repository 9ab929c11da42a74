"""`stronghold quarantine …` and `stronghold digest` in-process, and the milter service's hourly purge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from stronghold.cli import main
from stronghold.store import accounts, quarantine
from stronghold.store.db import Store
from stronghold.store.tables import QuarantineItem
from tests.harness.smtpsink import SmtpSink


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: SmtpSink) -> Store:
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STRONGHOLD_RELEASE_SMTP", f"127.0.0.1:{sink.port}")
    store = Store(f"sqlite:///{tmp_path / 'data' / 'stronghold.db'}")
    store.upgrade()
    yield store
    store.dispose()


def _hold(store: Store, rcpts: list[str], subject: str, age_days: float = 0, **kw) -> list[int]:
    args = {"sender": "deals@spam.example", "subject": subject, "queue_id": "QC", "score": 0.95,
            "category": "spam", "reason": "spam", "trace": "model:0.95", "virus": None}
    args.update(kw)
    with store.session() as s:
        ids = quarantine.hold(s, f"Subject: {subject}\r\n\r\nHello \x1b[31mred\r\n".encode(), recipients=rcpts,
                              **args)
        s.execute(update(QuarantineItem).where(QuarantineItem.id.in_(ids))
                  .values(ts=time.time() - age_days * 86400))
    return ids


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_ls_show_release_rm_purge(env: Store, sink: SmtpSink, capsys: pytest.CaptureFixture[str]) -> None:
    a1, a3 = _hold(env, ["m1@example.com", "m3@example.com"], "Weekly deals")
    old = _hold(env, ["m3@example.com"], "Ancient offer", age_days=40)[0]
    virus = _hold(env, ["m3@example.com"], "Invoice", category="virus", virus="Eicar-Test-Signature")[0]

    rows = _json(capsys, ["quarantine", "ls", "--json"])
    assert [r["id"] for r in rows] == [virus, a3, a1, old]
    assert rows[0]["virus"] == "Eicar-Test-Signature" and rows[1]["recipient"] == "m3@example.com"
    assert [r["id"] for r in _json(capsys, ["quarantine", "ls", "--json", "--recipient", "m1@example.com"])] == [a1]
    assert [r["id"] for r in _json(capsys, ["quarantine", "ls", "--json", "--search", "ANCIENT"])] == [old]
    assert [r["id"] for r in _json(capsys, ["quarantine", "ls", "--json", "--since", "2d",
                                            "--no-viruses"])] == [a3, a1]
    assert main(["quarantine", "ls", "--since", "yesterday"]) == 2
    assert "is not a time" in capsys.readouterr().err

    assert main(["quarantine", "show", str(a3)]) == 0
    out = capsys.readouterr().out
    assert "recipient: m3@example.com" in out and "Subject: Weekly deals" in out and "Hello ?[31mred" in out
    assert "\x1b" not in out
    shown = _json(capsys, ["quarantine", "show", str(a3), "--json"])
    assert shown["headers"]["subject"] == "Weekly deals" and shown["released"] is None

    released = _json(capsys, ["quarantine", "release", str(a3), str(virus), "--by", "ops", "--json"])
    assert [(r["id"], r["released_by"]) for r in released] == [(a3, "ops"), (virus, "ops")]
    assert sorted(m.recipients[0] for m in sink.messages) == ["m3@example.com", "m3@example.com"]
    assert main(["quarantine", "release", str(a3)]) == 2
    assert "already released by ops" in capsys.readouterr().err and len(sink.messages) == 2

    assert main(["quarantine", "rm", str(a1)]) == 0
    assert main(["quarantine", "rm", str(a1)]) == 2
    assert "no quarantined message" in capsys.readouterr().err
    assert main(["quarantine", "show", str(a1)]) == 2
    assert _json(capsys, ["quarantine", "purge", "--json"]) == {"deleted": 1, "days": 30}
    assert [r["id"] for r in _json(capsys, ["quarantine", "ls", "--json"])] == [virus, a3]


def test_digest_command_dry_run_then_send(env: Store, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STRONGHOLD_DIGEST_HOUR", "0")
    with env.session() as s:
        accounts.assign_address(s, accounts.add_user(s, "m3", "long enough password"), "m3@example.com")
    _hold(env, ["m3@example.com"], "Weekly deals", age_days=0.01)
    assert main(["digest", "--dry-run", "--show"]) == 0
    out = capsys.readouterr().out
    assert "m3: dry run (1 messages to m3@example.com)" in out and "subject: Weekly deals" in out
    assert sink.messages == []
    assert main(["digest"]) == 0 and "m3: sent" in capsys.readouterr().out
    assert main(["digest"]) == 0 and "m3: not due" in capsys.readouterr().out
    assert len(sink.messages) == 1
    assert main(["digest", "--user", "nobody"]) == 2
    assert main(["digest", "--user", "m3", "--set", "off"]) == 0
    assert main(["digest", "--user", "m3"]) == 2  # no enabled user m3 with a digest
    assert "no enabled user m3" in capsys.readouterr().err


def test_the_milter_service_purges_the_quarantine_with_the_message_log(env: Store, make_config) -> None:
    from stronghold.findings import Findings
    from stronghold.message import parse
    from stronghold.outcome import Outcome
    from stronghold.policy import Policy
    from stronghold.precedence import decide
    from stronghold.service import Service
    from stronghold.store.entries import ListIndex
    from stronghold.verdict import Envelope
    _hold(env, ["m3@example.com"], "old", age_days=31)
    keep = _hold(env, ["m3@example.com"], "new", age_days=29)
    cfg = make_config(database_url=env.url, clamd_socket="none")
    service = Service(cfg, store=env)
    env_ = Envelope("x@y.example", ("m3@example.com",))
    msg = parse(b"Subject: hi\r\n\r\nbody")
    service.record(env_, msg, Outcome(decide(env_, msg, Findings(lists=ListIndex([])), Policy()), None, 0.0))
    service.db.drain(timeout=30)
    with env.session() as s:
        assert [h.id for h in quarantine.find(s, recipients=None)] == keep


def test_ls_names_the_from_with_the_envelope_sender_where_it_differs(env: Store,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """As the Junk page: the From first, the envelope sender beside it only where it differs; an item
    held before the From was recorded (header_from NULL) has it read from its held copy."""
    def hold(sender: str, header_from: str, subject: str) -> int:
        raw = f"From: {header_from}\r\nSubject: {subject}\r\n\r\nHi\r\n".encode()
        with env.session() as s:
            return quarantine.hold(s, raw, recipients=["q@example.com"], sender=sender, subject=subject,
                                   queue_id="QF", score=0.9, category="spam", reason="spam", trace="",
                                   virus=None)[0]
    differs = hold("bounce-9@mailer.example", "Shop <news@shop.example>", "differs")
    same = hold("NEWS@shop.example", "Shop <news@shop.example>", "same")
    old = hold("bounce-1@mailer.example", "Old Shop <old@shop.example>", "old")
    with env.session() as s:  # as a row held before migration 0008
        s.execute(update(QuarantineItem).where(QuarantineItem.id == old).values(header_from=None))

    assert main(["quarantine", "ls"]) == 0
    lines = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert lines[str(differs)][4] == "Shop <news@shop.example> (envelope bounce-9@mailer.example)"
    assert lines[str(same)][4] == "Shop <news@shop.example>"
    assert lines[str(old)][4] == "Old Shop <old@shop.example> (envelope bounce-1@mailer.example)"
    rows = {r["id"]: r for r in _json(capsys, ["quarantine", "ls", "--json"])}
    assert (rows[differs]["header_from"], rows[differs]["other_envelope"]) == \
        ("Shop <news@shop.example>", "bounce-9@mailer.example")
    assert (rows[same]["sender"], rows[same]["other_envelope"]) == ("NEWS@shop.example", "")
    assert rows[old]["header_from"] == "Old Shop <old@shop.example>"
    assert _json(capsys, ["quarantine", "show", str(old), "--json"])["header_from"] == "Old Shop <old@shop.example>"


def test_ls_shows_scores_to_four_places_as_the_web_ui(env: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """0.9998 read "1.000" (the Junk page says 0.9998; no score is ever 1)."""
    with env.session() as s:
        [item] = quarantine.hold(s, b"From: a@spam.example\r\nSubject: rates\r\n\r\nHi\r\n",
                                 recipients=["q@example.com"], sender="a@spam.example", subject="rates",
                                 queue_id="QS", score=0.99978, category="spam", reason="spam", trace="", virus=None)
    assert main(["quarantine", "ls"]) == 0
    [line] = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{item}\t")]
    assert line[5] == "0.9998"


def test_release_says_what_it_released_when_another_item_was_released_elsewhere(
        env: Store, sink: SmtpSink, capsys: pytest.CaptureFixture[str]) -> None:
    """Another node (or admin) released the second item first: the first is still released, and said
    so, and the second is the error (before: the error alone, as if nothing had been sent)."""
    first, second = _hold(env, ["m1@example.com", "m3@example.com"], "Weekly deals")
    assert main(["quarantine", "release", str(second), "--by", "other-node"]) == 0
    capsys.readouterr()
    assert main(["quarantine", "release", str(first), str(second), "--by", "this-node"]) == 2
    out, err = capsys.readouterr()
    assert out == f"released {first} to m1@example.com\n"
    assert f"message {second} was already released by other-node" in err
    assert sorted(m.recipients[0] for m in sink.messages) == ["m1@example.com", "m3@example.com"]  # once each
    assert main(["quarantine", "release", str(first), str(second), "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == []
