"""`stronghold scan` of a file gives the verdict the milter gives the same message through Postfix."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest

from devtools.localstack import wait_for
from stronghold.cli import main
from stronghold.store import entries, messagelog
from stronghold.store.tables import MessageRow
from tests.conftest import Stack, corpus_files
from tests.e2e import mail

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stack's model is trained on the corpus


def _scan(stack: Stack, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    assert main(["--config", str(stack.milter.config), "scan", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _logged_scores(stack: Stack, tids: dict[str, str]) -> dict[str, float | None]:
    """Score the milter logged for each test id (found by the X-Test-Id token it logged)."""
    found: dict[str, float | None] = {}
    with stack.store.session() as s:
        for row in s.query(MessageRow).all():
            tokens = messagelog.unpack_tokens(row.tokens) if row.tokens else set()
            for tid in tids:
                if f"x-test-id:w:{tid}" in tokens:
                    found[tid] = row.score
    return found


def test_scan_scores_files_exactly_as_the_milter_does(stack: Stack, corpus: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # files that carry headers Postfix removes (Return-Path) and bare-LF line ends
    picked = [p for p in corpus_files(corpus, "spam")[:40] + corpus_files(corpus, "ham")[:40]
              if b"\nReturn-Path:" in p.read_bytes()][:24]
    assert len(picked) >= 20
    files: dict[str, Path] = {}
    for i, path in enumerate(picked):
        tid, data = mail.from_file(path)
        out = tmp_path / f"{i:02d}.eml"
        out.write_bytes(data.replace(b"\r\n", b"\n"))  # as a file on disk would be
        files[tid] = out
        try:  # delivered or refused, the milter logs its score
            mail.send(stack.postfix.port, "sender@corpus.example", ["scan-check@example.com"], data)
        except smtplib.SMTPDataError:
            pass
    wait_for(lambda: len(_logged_scores(stack, files)) == len(files), 30, "every message in the log")
    logged = _logged_scores(stack, files)
    scanned = _scan(stack, capsys, "--rcpt", "scan-check@example.com", *map(str, files.values()))
    by_path = {r["path"]: r for r in scanned}
    for tid, path in files.items():
        assert by_path[str(path)]["score"] == logged[tid], path.name
    # the bare classifier applies the same normalization, so it agrees too
    bare = _scan(stack, capsys, "--classifier-only", *map(str, files.values()))
    assert [r["score"] for r in bare] == [by_path[str(p)]["score"] for p in files.values()]


def test_scan_applies_clamd_lists_and_policy(stack: Stack, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, virus = mail.with_eicar("friend@trusted-scan.example")
    (tmp_path / "virus.eml").write_bytes(virus)
    _, plain = mail.simple("pest@blocked-scan.example")
    (tmp_path / "plain.eml").write_bytes(plain)
    with stack.store.session() as s:
        entries.add_entry(s, "victim@example.com", "block", "pest@blocked-scan.example")
        entries.add_entry(s, "victim@example.com", "allow", "friend@trusted-scan.example")
    [infected] = _scan(stack, capsys, "--rcpt", "victim@example.com", str(tmp_path / "virus.eml"))
    assert infected["category"] == "virus" and infected["virus"]  # the allow entry does not help
    assert infected["recipients"][0]["action"] == "reject"
    blocked, other = _scan(stack, capsys, "--rcpt", "victim@example.com", "--rcpt", "bystander@example.com",
                           str(tmp_path / "plain.eml"))[0]["recipients"]
    assert (blocked["address"], blocked["category"]) == ("victim@example.com", "blocked")
    assert any("block" in step for step in blocked["trace"])
    assert (other["address"], other["category"]) == ("bystander@example.com", "clean")
    # the bare classifier knows nothing of viruses or lists
    [bare] = _scan(stack, capsys, "--classifier-only", str(tmp_path / "virus.eml"))
    assert "category" not in bare and "recipients" not in bare and isinstance(bare["score"], float)
