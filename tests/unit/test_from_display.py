"""The From as pages and 'stronghold quarantine' show it (stronghold.lists.shown_from): never a
display name that looks like another address as the sender, several addresses or From headers
marked, a bounce's null envelope sender shown; and the one reading of "the From address"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stronghold.cli import main
from stronghold.headers import MAX_FROMS
from stronghold.lists import envelope_shown, from_address, other_envelope, shown_from
from stronghold.message import parse
from stronghold.store import quarantine
from stronghold.store.db import Store
from stronghold.store.messagelog import entry
from stronghold.verdict import Action, Category, Envelope, RecipientDecision, Verdict

SPOOF = b"From: =?utf-8?q?boss=40bank=2Eexample?= <evil@attacker.example>\r\n"
REAL = "evil@attacker.example"
CLAIMED = "boss@bank.example"


def _stored(raw_from: bytes) -> str:
    """The From as the milter records it: decoded."""
    return parse(raw_from + b"Subject: x\r\n\r\nbody\r\n").header("from") or ""


@pytest.mark.parametrize("raw", [
    SPOOF,
    b'From: "boss@bank.example" <evil@attacker.example>\r\n',
    b"From: =?utf-8?b?Ym9zc++8oGJhbmsuZXhhbXBsZQ==?= <evil@attacker.example>\r\n",  # a full-width at sign
    b"From: evil@attacker.example (boss@bank.example)\r\n",
    b"From: =?utf-8?q?Your_bank_=28boss=40bank=2Eexample=29?= <evil@attacker.example>\r\n",
])
def test_an_address_like_display_name_is_never_shown_as_the_sender(raw: bytes) -> None:
    shown = shown_from(_stored(raw))
    assert shown.text == REAL
    assert len(shown.warnings) == 1 and "looks like another address" in shown.warnings[0]
    assert from_address(_stored(raw)) == REAL  # whom the list buttons act on: the real address
    assert other_envelope(_stored(raw), REAL) == ""


@pytest.mark.parametrize("value, text", [
    ("Alice Example <alice@example.com>", "Alice Example <alice@example.com>"),
    ("Smith, Anna <anna@example.com>", "Smith, Anna <anna@example.com>"),  # a decoded name with a comma
    ("alice@example.com <ALICE@example.com>", "ALICE@example.com"),  # the name is the address itself
    ("alice@example.com", "alice@example.com"),
])
def test_ordinary_from_headers_are_shown_as_they_are(value: str, text: str) -> None:
    assert shown_from(value) == shown_from(value).__class__(text, ())


def test_several_addresses_or_from_headers_are_all_shown_and_marked() -> None:
    two = shown_from("a@one.example, Bee@two.example")
    assert two.text == "a@one.example, Bee@two.example"
    assert two.warnings == ("2 addresses in one From: no single sender",)
    assert from_address("a@one.example, b@two.example") is None
    # decoded, "a@one.example, Bee" may be one encoded name: the angle address is the sender's
    assert shown_from("a@one.example, Bee <b@two.example>").text == "b@two.example"
    headers = shown_from("Shop <a@one.example>\nb@two.example")  # two From headers, as with_from gives them
    assert headers.text == "a@one.example, b@two.example" and "2 From headers" in headers.warnings[0]
    counted = shown_from("Shop <a@one.example>", headers=3)  # only the first kept, the count from the features
    assert counted.text == "Shop <a@one.example>" and "3 From headers" in counted.warnings[0]
    assert from_address("Shop <a@one.example>\nb@two.example") is None
    assert other_envelope("Shop <a@one.example>\na@one.example", "a@one.example") == "a@one.example"


def test_a_bounce_shows_its_null_envelope_sender() -> None:
    assert other_envelope("Mailer-Daemon <mailer-daemon@example.net>", "") == "<>"
    assert other_envelope("Mailer-Daemon <mailer-daemon@example.net>", "<>") == "<>"
    assert envelope_shown("") == envelope_shown("<>") == "<> (bounce)"
    assert envelope_shown("x@example.net") == "x@example.net"


def test_webui_and_stronghold_read_the_from_address_the_same_way() -> None:
    from webui import messages, senders
    assert senders.from_address is from_address
    assert not hasattr(messages, "getaddresses")  # no second reading of the From there


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(tmp_path / "models"))
    store = Store(f"sqlite:///{tmp_path / 'data' / 'stronghold.db'}")
    store.upgrade()
    yield store
    store.dispose()


def _hold(store: Store, raw: bytes, sender: str) -> int:
    with store.session() as s:
        return quarantine.hold(s, raw, recipients=["alice@example.com"], sender=sender, subject="pay", queue_id="Q1",
                               score=0.99, category="spam", reason="spam", trace="", virus=None,
                               header_from=parse(raw).header("from") or "")[0]


def test_quarantine_ls_and_show_never_name_the_spoofed_address_as_sender(cli_store: Store,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spoof = _hold(cli_store, SPOOF + b"Subject: pay\r\n\r\nnow\r\n", "")
    twice = _hold(cli_store, b"From: Shop <a@one.example>\r\nFrom: b@two.example\r\nSubject: pay\r\n\r\nnow\r\n",
                  "a@one.example")
    assert main(["quarantine", "ls"]) == 0
    lines = {int(line.split("\t")[0]): line.split("\t")[4] for line in capsys.readouterr().out.splitlines()}
    assert lines[spoof].startswith(REAL + " [its display name \"boss@bank.example\" looks like another address")
    assert lines[spoof].endswith("(envelope <> (bounce))")
    assert lines[twice].startswith("a@one.example, b@two.example [2 From headers")
    assert main(["quarantine", "show", str(spoof)]) == 0
    out = capsys.readouterr().out
    assert f"From: {REAL}\n" in out and "envelope sender: <> (bounce)" in out
    assert f"From: {CLAIMED}" not in out and "looks like another address" in out
    assert main(["quarantine", "ls", "--json"]) == 0
    data = {d["id"]: d for d in json.loads(capsys.readouterr().out)}
    assert data[spoof]["from_shown"] == REAL and data[spoof]["other_envelope"] == "<>"
    assert data[twice]["from_warnings"][0].startswith("2 From headers")


def test_an_item_records_every_from_header_within_its_column() -> None:
    """quarantine.recorded_from: one line per From header (up to MAX_FROMS), 320 characters in all."""
    one = b"From: Shop <a@one.example>\r\nSubject: x\r\n\r\nFrom: not a header\r\n"
    assert quarantine.recorded_from(one, "Shop <a@one.example>") == "Shop <a@one.example>"
    assert quarantine.recorded_from(one) == "Shop <a@one.example>"
    many = b"".join(b'From: "%s" <u%d@example.net>\r\n' % (b"N" * 60, n) for n in range(12)) + b"\r\nbody\r\n"
    kept = quarantine.recorded_from(many, f'"{"N" * 60}" <u0@example.net>')
    assert len(kept) <= 320 and kept.count("\n") == MAX_FROMS - 1
    shown = shown_from(kept)
    assert shown.text.split(", ") == [f"u{n}@example.net" for n in range(MAX_FROMS)]
    assert shown.warnings[0] == f"{MAX_FROMS} From headers: a sign of forgery"


def test_the_message_log_records_every_from_header_as_held_items_do() -> None:
    """Recent mail shows several From headers for mail that was delivered or refused too, also
    when its content (the features) was not kept."""
    raw = b"From: Boss <boss@bank.example>\r\nFrom: evil@bad.example\r\nSubject: pay\r\n\r\nnow\r\n"
    env = Envelope("evil@bad.example", ("m1@example.com",), "192.0.2.1", "h", "Q1")
    verdict = Verdict(Action.ACCEPT, Category.CLEAN, 0.1, 0.9, None,
                      (RecipientDecision("m1@example.com", Action.ACCEPT, Category.CLEAN, "clean"),), ())
    logged = entry(env, parse(raw), verdict).message["header_from"]
    assert logged == "Boss <boss@bank.example>\nevil@bad.example"
    shown = shown_from(logged)
    assert shown.warnings[0] == "2 From headers: a sign of forgery"
    assert from_address(logged) is None  # no single sender for the list buttons
