"""The milter adapter without a mail server (pymilter's TestCtx), several messages per connection."""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import Milter
import pytest
from Milter import testctx

from stronghold import __version__
from stronghold import transaction as transaction_module
from stronghold.antivirus import EICAR, NoScanner
from stronghold.cli import main
from stronghold.config import Config
from stronghold.message import MAX_BYTES, parse
from stronghold.milter import StrongholdMilter, factory
from stronghold.service import Service
from stronghold.store import entries, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.verdict import Envelope

pytestmark = pytest.mark.corpus  # the model is trained on it


class EicarOnlyScanner:
    """A stand-in for clamd (the real one is in tests/e2e)."""

    def scan(self, stream):
        from stronghold.antivirus import ScanResult
        return ScanResult("Test.EICAR" if EICAR in stream.read() else None)


NOREPLY_BITS = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA
                | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY | Milter.P_NR_HDR)


@pytest.fixture
def settings() -> dict[str, object]:
    return {}


_DB_NUMBERS = itertools.count(1)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def milter(make_config, models_dir: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, object],
           backend: str, request: pytest.FixtureRequest):
    if backend == "postgres":
        cluster = request.getfixturevalue("postgres")
        settings = {**settings, "database_url": cluster.create_database(f"milter_{os.getpid()}_{next(_DB_NUMBERS)}")}
    cfg: Config = make_config(models_dir=models_dir, lists_refresh_seconds=0, **settings)
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    service = Service(cfg, store=store, scanner=EicarOnlyScanner())
    monkeypatch.setattr(Milter, "factory", factory(service))
    # TestCtx stops feeding at a NOREPLY answer, so it plays an MTA that offers no "no reply" bits
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NOREPLY_BITS, 0, 0])
    ctx = testctx.TestCtx()
    assert ctx._connect(ip="192.0.2.7") == Milter.CONTINUE
    yield ctx, store
    ctx._close()
    service.db.drain(10)  # queued log writes land before the pool closes
    store.dispose()


def test_state_does_not_leak_between_messages(milter) -> None:
    ctx, _store = milter
    virus = b"From: a@b.example\nSubject: x\n\n" + EICAR + b"\n"
    assert ctx._feedFile(io.BytesIO(virus), "a@b.example", "u@example.com") == Milter.REJECT
    assert ctx._reply[0] == "554"
    clean = (b"From: a@b.example\nSubject: lunch\nX-Spam-Flag: NO\n\n"
             b"See you at noon for the project meeting.\n")
    assert ctx._feedFile(io.BytesIO(clean), "a@b.example", "v@example.com") == Milter.ACCEPT
    m = ctx.getpriv()
    assert m.txn.recipients == ["v@example.com"]  # not u@ from the first message
    assert ctx._msg["X-Spam-Flag"] in ("YES", "NO") and ctx._headerschanged
    ctx._abort()
    assert m.txn is None


def test_headers_get_no_answer_where_postfix_agrees(milter) -> None:
    """Postfix is asked not to wait for an answer to each header (P_NR_HDR); where it agrees, the
    header callback answers NOREPLY (libmilter then sends nothing), elsewhere CONTINUE."""
    ctx, _store = milter
    assert StrongholdMilter.protocol_mask() & Milter.P_NR_HDR == 0  # the bit is asked for, not refused
    agreed = Milter.factory()
    agreed._setctx(None)
    assert agreed.negotiate([Milter.CURR_ACTS, 0x1FFFFF, 0, 0]) == Milter.CONTINUE  # an MTA offering every bit
    assert agreed._protocol & Milter.P_NR_HDR
    assert agreed.envfrom("<a@b.example>") == Milter.NOREPLY
    assert agreed.header("Subject", b"lunch") == Milter.NOREPLY
    assert agreed.header("X-Spam-Flag", b"YES") == Milter.NOREPLY
    assert agreed.txn.strip == [("X-Spam-Flag", 1)] and agreed.txn.subject_raw == b"lunch"
    plain = ctx.getpriv()  # the fixture's MTA offers no "no reply" bits
    assert plain.envfrom("<a@b.example>") == Milter.CONTINUE
    assert plain.header("Subject", b"lunch") == Milter.CONTINUE


def test_end_of_headers_is_not_asked_for_and_the_blank_line_still_spooled(milter, monkeypatch) -> None:
    """Postfix is told not to send end of headers (one milter command less per message); the
    blank line between headers and body is spooled before the first body chunk, or at end of
    message when there is no body: the parser sees the message as before."""
    ctx, _store = milter
    assert not StrongholdMilter.protocol_mask() & Milter.P_NOEOH  # the skip is left for Postfix to grant
    parsed: list[bytes] = []
    real_parse = transaction_module.parse
    monkeypatch.setattr(transaction_module, "parse", lambda raw: parsed.append(raw) or real_parse(raw))
    body = b"See you at noon for the project meeting.\n" * 400  # several of TestCtx's 8 kB chunks
    for raw in (b"From: a@b.example\nSubject: lunch\n\n" + body, b"From: a@b.example\nSubject: nothing\n\n"):
        assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "u@example.com") == Milter.ACCEPT
    head, sep, rest = parsed[0].partition(b"\r\n\r\n")
    assert head == b"From: a@b.example\r\nSubject: lunch" and sep and rest == body
    assert parsed[1] == b"From: a@b.example\r\nSubject: nothing\r\n\r\n"
    assert parse(parsed[0]).header("subject") == "lunch" and "noon" in parse(parsed[0]).text


def test_rcpt_block_refuses_one_recipient(milter) -> None:
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "w@example.com", "block", "@spammer.example")
    assert ctx._envfrom("<x@spammer.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<w@example.com>") == Milter.REJECT
    assert ctx._reply[:2] == ("550", "5.7.1")
    assert ctx._envrcpt("<y@example.com>") == Milter.CONTINUE
    assert ctx.getpriv().txn.recipients == ["y@example.com"]


def test_no_scanner_configured_is_visible(make_config, models_dir: Path) -> None:
    """clamd_socket = none: the trace says no scan was done, never antivirus=clean."""
    cfg = make_config(models_dir=models_dir, clamd_socket="none")
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    service = Service(cfg, store=store)
    try:
        assert isinstance(service.scanner, NoScanner)
        raw = b"From: a@b.example\nSubject: lunch\n\nSee you at noon.\n"
        env = Envelope("a@b.example", ("u@example.com",))
        verdict = service.decide(env, parse(raw), io.BytesIO(raw)).verdict
        assert [str(s) for s in verdict.trace if s.step == "antivirus"] == ["antivirus=none(no scanner configured)"]
        assert "antivirus=none" in dict(verdict.headers)["X-Spam-Status"]
        service.scanner = EicarOnlyScanner()  # the same message, scanned and found clean
        scanned = service.decide(env, parse(raw), io.BytesIO(raw)).verdict
        assert [str(s) for s in scanned.trace if s.step == "antivirus"] == ["antivirus=clean"]
        assert (verdict.action, verdict.score) == (scanned.action, scanned.score)  # only the trace differs
    finally:
        service.db.drain(10)
        store.dispose()


def test_header_from_block_removes_the_recipient_as_postfix_gave_it(milter) -> None:
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "mixed@example.com", "block", "@nagging.example")
    raw = b"From: boss@nagging.example\nSubject: again\n\nPlease reply.\n"
    assert ctx._feedFile(io.BytesIO(raw), "relay@lists.example", "Mixed@Example.com", "other@example.com") \
        == Milter.ACCEPT
    assert ctx._delrcpt == ["<Mixed@Example.com>"]


def test_large_message_is_parsed_as_truncated(milter) -> None:
    ctx, store = milter
    raw = b"From: a@b.example\nSubject: big\n\n" + b"word " * (MAX_BYTES // 5 + 1000) + b"\n"
    assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "big@example.com") == Milter.ACCEPT
    ctx.getpriv().service.db.drain()  # the log write is queued on the store thread
    with store.session() as s:
        row = messagelog.recent(s, messagelog.LogFilter(addresses=("big@example.com",)))[0]
        assert "defect:truncated" in messagelog.unpack_tokens(row.tokens)


EVERYTHING_IS_SPAM = {"spam_threshold": 0.0}  # every score is at or above it


def _items(store: Store, *rcpts: str) -> list[quarantine.Held]:
    with store.session() as s:
        return quarantine.find(s, recipients=list(rcpts))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("settings", [EVERYTHING_IS_SPAM])
def test_each_recipient_gets_their_own_copy(milter) -> None:
    """m1 allows the sender: the delivered copy is clean; m3's would be tagged, so it is held."""
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "m1@example.com", "allow", "news@shop.example", trust_unauthenticated=True)
    raw = (b"From: news@shop.example\nSubject: Sale\nX-Spam-Level: *****\nX-Stronghold-Note: forged\n\n"
           b"Everything must go.\n")
    assert ctx._feedFile(io.BytesIO(raw), "news@shop.example", "m1@example.com", "M3@example.com") \
        == Milter.ACCEPT
    assert ctx._delrcpt == ["<M3@example.com>"]
    assert ctx._msg["X-Spam-Flag"] == "NO" and ctx._msg["Subject"] == "Sale"
    assert ctx._msg["X-Spam-Level"] is None and ctx._msg["X-Stronghold-Note"] is None
    held = _items(store, "m3@example.com")
    assert [(h.recipient, h.category, h.subject, h.header_from) for h in held] == [
        ("m3@example.com", "spam", "Sale", "news@shop.example")]
    assert not _items(store, "m1@example.com")
    assert "m1@example.com" not in held[0].trace and "allow" not in held[0].trace  # m1's list is private
    with store.session() as s:
        stored = quarantine.content(s, held[0].id)
    assert b"Everything must go." in stored and b"X-Spam-Level" not in stored and b"X-Stronghold" not in stored
    ctx.getpriv().service.db.drain()
    with store.session() as s:
        row = messagelog.recent(s, messagelog.LogFilter(addresses=("m3@example.com",)))[0]
        assert {r.address: r.action for r in row.recipients} == {"m1@example.com": "accept",
                                                                "m3@example.com": "quarantine"}


@pytest.mark.parametrize("settings", [EVERYTHING_IS_SPAM])
def test_every_form_of_a_held_recipient_is_removed_and_held_once(milter) -> None:
    """M3@, m3@ and "m3"@ are one mailbox: one held copy, and no form left for Postfix to deliver."""
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "m1@example.com", "allow", "news@shop.example", trust_unauthenticated=True)
    raw = b"From: news@shop.example\nSubject: Sale\n\nEverything must go.\n"
    assert ctx._feedFile(io.BytesIO(raw), "news@shop.example", "m1@example.com", "M3@example.com",
                         "m3@example.com", '"m3"@example.com.') == Milter.ACCEPT
    assert ctx._delrcpt == ["<M3@example.com>", "<m3@example.com>", '<"m3"@example.com.>']
    assert [h.recipient for h in _items(store, "m3@example.com")] == ["m3@example.com"]


@pytest.mark.parametrize("settings", [{"recipient_delimiter": "+"}])
def test_an_address_extension_gets_its_mailboxs_lists(milter) -> None:
    """With Postfix's recipient_delimiter, jack+promo@ is delivered to jack: jack's block list holds."""
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "m3@example.com", "block", "news@shop.example")
    raw = b"From: news@shop.example\nSubject: Sale\n\nEverything must go.\n"
    assert ctx._feedFile(io.BytesIO(raw), "bounce@relay.example", "M3+promo@example.com") == Milter.REJECT
    assert ctx._feedFile(io.BytesIO(raw), "news@shop.example", "m3+promo@example.com") == Milter.REJECT  # at RCPT


OUR_ID = "mx.stronghold.test"
FORGED_AR = (b"Authentication-Results: " + OUR_ID.encode() + b"; dkim=pass header.d=bank.example\n"
             b"Authentication-Results: elsewhere.example; dkim=none\n"
             b"Authentication-Results: (a comment) " + OUR_ID.upper().encode()
             + b";\n dmarc=pass header.from=bank.example\n")


@pytest.mark.parametrize("settings", [{**EVERYTHING_IS_SPAM, "authserv_id": OUR_ID}])
def test_forged_authentication_results_leave_the_held_copy_too(milter) -> None:
    """A release must not hand the user's mail client a forged "dkim=pass" under our own id: the
    copies with our id that came from outside are gone from the held copy, as from the delivered one."""
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "m1@example.com", "allow", "ceo@bank.example", trust_unauthenticated=True)
    raw = b"From: ceo@bank.example\nSubject: Wire\n" + FORGED_AR + b"\nPay the invoice today.\n"
    assert ctx._feedFile(io.BytesIO(raw), "ceo@bank.example", "m1@example.com", "m3@example.com") \
        == Milter.ACCEPT
    delivered = [v for v in ctx._msg.get_all("Authentication-Results") or [] if "pass" in v]
    assert delivered == []  # the delivered copy: only ours (no pass in it) and elsewhere's
    with store.session() as s:
        stored = quarantine.content(s, _items(store, "m3@example.com")[0].id)
    assert b"Pay the invoice today." in stored and b"pass" not in stored
    assert b"Authentication-Results: elsewhere.example; dkim=none\r\n" in stored  # other ids are left alone


@pytest.mark.parametrize("settings", [{**EVERYTHING_IS_SPAM, "authserv_id": OUR_ID, "auth_mode": "header",
                                       "spam_action": "quarantine", "spam_action_high": "quarantine"}])
def test_held_copy_keeps_the_checker_in_fronts_results_only(milter) -> None:
    """Header mode: the topmost result with our id is the checker's in front; lower ones are forged."""
    ctx, store = milter
    genuine = b"Authentication-Results: " + OUR_ID.encode() + b"; dkim=fail header.d=bank.example\n"
    raw = b"From: ceo@bank.example\nSubject: Wire\n" + genuine + FORGED_AR + b"\nPay the invoice today.\n"
    assert ctx._feedFile(io.BytesIO(raw), "ceo@bank.example", "m3@example.com") == Milter.DISCARD
    with store.session() as s:
        stored = quarantine.content(s, _items(store, "m3@example.com")[0].id)
    assert genuine.replace(b"\n", b"\r\n") in stored and b"pass" not in stored
    assert b"elsewhere.example" in stored


@pytest.mark.parametrize("settings", [{**EVERYTHING_IS_SPAM, "spam_action": "quarantine",
                                       "spam_action_high": "quarantine"}])
def test_nothing_delivered_means_discard_after_the_copies_are_held(milter) -> None:
    ctx, store = milter
    raw = b"From: a@b.example\nSubject: x\n\nbuy now\n"
    assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "p@example.com", "q@example.com") == Milter.DISCARD
    assert [h.recipient for h in _items(store, "p@example.com", "q@example.com")] == ["q@example.com",
                                                                                      "p@example.com"]


@pytest.mark.parametrize("settings", [EVERYTHING_IS_SPAM])
def test_quarantine_write_failing_tempfails_and_delivers_nothing(milter) -> None:
    ctx, store = milter
    with store.session() as s:
        entries.add_entry(s, "m1@example.com", "allow", "news@shop.example", trust_unauthenticated=True)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER no_holds BEFORE INSERT ON quarantine_items "
                             "BEGIN SELECT RAISE(ABORT, 'quarantine is read-only'); END")
    raw = b"From: news@shop.example\nSubject: Sale\n\nEverything must go.\n"
    assert ctx._feedFile(io.BytesIO(raw), "news@shop.example", "m1@example.com", "m3@example.com") \
        == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.7.1") and not ctx._delrcpt
    ctx.getpriv().service.db.drain()
    with store.session() as s:
        row = messagelog.recent(s, messagelog.LogFilter(addresses=("m1@example.com",)))[0]
        assert row.action == "tempfail" and "quarantine=error" in row.trace


def test_check_config_says_what_spam_gets_and_checks_the_quarantine(make_config, models_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from stronghold.cli_services import check_config
    cfg = make_config(models_dir=models_dir, clamd_socket="none")
    with Store(cfg.db_url) as st:
        st.upgrade()
    assert check_config(cfg) == 0
    out = capsys.readouterr().out
    assert "spam (score >= 0.999): tag (delivered into Junk)" in out and "virus: reject" in out
    assert "ok: quarantine store readable" in out
    with Store(cfg.db_url) as st, st.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE quarantine_items")
    assert check_config(cfg) == 1
    assert "FAIL: database error" in capsys.readouterr().out


def _record_header_changes(ctx, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Every chgheader the milter sends (TestCtx itself drops the index)."""
    calls: list[tuple[str, int, str]] = []
    original = ctx.chgheader

    def chgheader(field: str, idx: int, value: str) -> None:
        calls.append((field, idx, value))
        original(field, idx, value)

    monkeypatch.setattr(ctx, "chgheader", chgheader)
    return calls


@pytest.mark.parametrize("settings", [{"spam_threshold": 1.0}])  # nothing is spam: the copy is delivered clean
def test_forged_verdict_headers_are_stripped_from_the_delivered_copy(milter, monkeypatch) -> None:
    ctx, _store = milter
    changes = _record_header_changes(ctx, monkeypatch)
    raw = (b"From: a@b.example\nX-Spam-Flag: YES\nSubject: lunch\nX-Spam-Status: Yes, score=1.0 forged\n"
           b"X-Spam-Flag: YES\nX-Stronghold-Version: forged\nX-Spamming-Tool: not ours\n\n"
           b"See you at noon for the project meeting.\n")
    assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "u@example.com") == Milter.ACCEPT
    # each outside copy is deleted by its own position, last first, so the indexes stay valid
    assert changes == [("X-Stronghold-Version", 1, ""), ("X-Spam-Flag", 2, ""), ("X-Spam-Status", 1, ""),
                       ("X-Spam-Flag", 1, "")]
    assert ctx._msg.get_all("X-Spam-Flag") == ["NO"]  # only ours, added after the strip
    assert ctx._msg.get_all("X-Stronghold-Version") == [ctx.getpriv().service.version_header()]
    assert "forged" not in ctx._msg["X-Spam-Status"]
    assert ctx._msg["X-Spamming-Tool"] == "not ours"  # only X-Spam-* and X-Stronghold-* are ours


def test_version_header_names_the_model_as_model_info_does(milter, models_dir: Path, tmp_path: Path,
                                                          monkeypatch, capsys) -> None:
    """An operator reads the header of a delivered message and finds that model with `model info`."""
    ctx, _store = milter
    raw = b"From: a@b.example\nSubject: lunch\n\nSee you at noon for the project meeting.\n"
    assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "u@example.com") == Milter.ACCEPT
    package, word, shown = ctx._msg["X-Stronghold-Version"].split(" ")
    assert (package, word) == (__version__, "model")
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "info"))
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(models_dir))
    assert main(["model", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert shown == info["id"] and info["version"].startswith(shown) and len(shown) == 12
    assert main(["model", "info"]) == 0
    assert capsys.readouterr().out.split("\n")[0] == f"id: {shown}"  # what it leads with


@pytest.mark.parametrize("settings", [EVERYTHING_IS_SPAM])  # tag (the default spam_action) everything
def test_tagged_copy_gets_the_subject_prefix(milter, monkeypatch) -> None:
    ctx, _store = milter
    changes = _record_header_changes(ctx, monkeypatch)
    raw = b"From: a@b.example\nReceived: by x\nSubject: Sale\nSubject: second\n\nEverything must go.\n"
    assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "u@example.com") == Milter.ACCEPT
    assert ctx._msg["X-Spam-Flag"] == "YES"
    assert changes == [("Subject", 1, "[SPAM] Sale")]  # the first Subject, the one readers see
    assert "[SPAM] Sale" in ctx._msg.get_all("Subject")
    # a message with no Subject gets one that says so
    raw = b"From: a@b.example\n\nEverything must go.\n"
    assert ctx._feedFile(io.BytesIO(raw), "a@b.example", "u@example.com") == Milter.ACCEPT
    assert ctx._msg.get_all("Subject") == ["[SPAM]"]
