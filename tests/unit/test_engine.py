"""The precedence table, every branch, with stand-in checks (the real ones are tested in e2e)."""

from __future__ import annotations

import io

import pytest

from stronghold.antivirus import ScannerError, ScanResult
from stronghold.authres import AuthResults
from stronghold.classifier import Clue, ModelError, Score
from stronghold.engine import Envelope, Findings, Policy, check_recipient, decide, evaluate
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.store.errors import StoreError
from stronghold.verdict import Action, Category

MSG = parse(b"From: Sender <s@from.example>\r\nSubject: hi\r\n\r\nhello there\r\n")
ENV = Envelope("s@env.example", ("a@x.example", "b@x.example"), "192.0.2.1", "helo", "Q1")
POLICY = Policy(reject_threshold=0.99, spam_action=Action.TAG, spam_action_high=Action.REJECT)
# both senders authenticated, so allow entries apply (tests/unit/test_allow_auth.py covers the rest)
AUTH = AuthResults("test", spf="pass", spf_domain="env.example", dkim=(("from.example", "pass"),),
                   from_domain="from.example")


def lists(*entries: tuple[str | None, str, str]) -> ListIndex:
    return ListIndex(ListEntry(i, o, k, p) for i, (o, k, p) in enumerate(entries, 1))


def found(score: float = 0.1, virus: str | None = None, idx: ListIndex | None = None,
          **kw: object) -> Findings:
    base: dict[str, object] = dict(scan=ScanResult(virus), score=Score(score, (Clue("tok", score),)),
                                   model_threshold=0.9, lists=idx or lists(), auth=AUTH)
    base.update(kw)
    return Findings(**base)  # type: ignore[arg-type]


def by_rcpt(verdict):
    return {d.recipient: (d.action, d.category) for d in verdict.decisions}


def test_clean_accepts_with_headers() -> None:
    v = decide(ENV, MSG, found(0.1), POLICY)
    assert v.action is Action.ACCEPT and v.category is Category.CLEAN
    assert dict(v.headers)["X-Spam-Flag"] == "NO"
    assert "X-Spam-Score" in dict(v.headers)


def test_spam_tag_band_and_reject_band() -> None:
    tag = decide(ENV, MSG, found(0.95), POLICY)
    assert tag.action is Action.TAG and tag.subject_prefix == "[SPAM]"
    assert dict(tag.headers)["X-Spam-Flag"] == "YES"
    rej = decide(ENV, MSG, found(0.995), POLICY)
    assert rej.action is Action.REJECT and rej.smtp_reply[0] == "550"


def test_virus_beats_every_allow_list() -> None:
    idx = lists(("a@x.example", "allow", "@env.example"), (None, "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.0, virus="Eicar", idx=idx), POLICY)
    assert v.action is Action.REJECT and v.category is Category.VIRUS
    assert v.smtp_reply[0] == "554" and "Eicar" in v.smtp_reply[2]


def test_recipient_block_beats_recipient_allow() -> None:
    idx = lists(("a@x.example", "block", "@from.example"), ("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.0, idx=idx), POLICY)
    assert by_rcpt(v)["a@x.example"] == (Action.REJECT, Category.BLOCKED)
    assert v.drop_recipients == ("a@x.example",)
    assert by_rcpt(v)["b@x.example"] == (Action.ACCEPT, Category.CLEAN)
    assert v.action is Action.ACCEPT


def test_recipient_allow_beats_global_block_and_score() -> None:
    idx = lists(("a@x.example", "allow", "s@env.example"), (None, "block", "*.env.example"))
    v = decide(ENV, MSG, found(0.999, idx=idx), POLICY)
    assert by_rcpt(v)["a@x.example"] == (Action.ACCEPT, Category.ALLOWED)
    assert by_rcpt(v)["b@x.example"] == (Action.REJECT, Category.BLOCKED)
    assert v.drop_recipients == ("b@x.example",)
    assert v.action is Action.ACCEPT  # a was allowed; b's block removes only b


def test_global_block_then_global_allow() -> None:
    v = decide(ENV, MSG, found(0.0, idx=lists((None, "block", "@env.example"))), POLICY)
    assert v.action is Action.REJECT and v.smtp_reply[2].startswith("Sender is blocked")
    v = decide(ENV, MSG, found(0.999, idx=lists((None, "allow", "@from.example"))), POLICY)
    assert v.action is Action.ACCEPT and v.category is Category.ALLOWED
    assert dict(v.headers)["X-Spam-Flag"] == "NO"


def test_disagreeing_recipients_never_lose_mail() -> None:
    """a allows the sender, b's score says reject: delivered to both, b's reject lowered to a tag."""
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.999, idx=idx), POLICY)
    assert v.action is Action.TAG and not v.drop_recipients
    assert dict(v.headers)["X-Spam-Flag"] == "YES"


def test_all_quarantine_holds_the_message() -> None:
    policy = Policy(reject_threshold=0.99, spam_action=Action.QUARANTINE)
    assert decide(ENV, MSG, found(0.95), policy).action is Action.QUARANTINE


def test_multi_recipient_header_does_not_name_recipients_or_lists() -> None:
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.2, idx=idx), POLICY)
    status = dict(v.headers)["X-Spam-Status"]
    assert "a@x.example" not in status and "@env.example" not in status
    assert "a@x.example" in v.summary  # the log has it all


@pytest.mark.parametrize("field, setting", [("scan_error", "on_scanner_error"),
                                            ("model_error", "on_model_error"),
                                            ("store_error", "on_store_error")])
def test_failed_check_follows_policy(field: str, setting: str) -> None:
    broken = found(0.1, **{field: "it broke", "scan": None if field == "scan_error" else ScanResult(None)})
    v = decide(ENV, MSG, broken, POLICY)
    assert v.action is Action.TEMPFAIL and v.smtp_reply[:2] == ("451", "4.7.1")
    carry_on = Policy(**{**POLICY.__dict__, setting: "accept"})
    v = decide(ENV, MSG, broken, carry_on)
    assert v.action is not Action.TEMPFAIL
    assert "error" in v.summary


def test_rcpt_time_block_respects_recipient_allow() -> None:
    idx = lists((None, "block", "@env.example"), ("a@x.example", "allow", "s@env.example"))
    assert check_recipient("s@env.example", "a@x.example", idx) is None
    d = check_recipient("s@env.example", "b@x.example", idx)
    assert d is not None and d.action is Action.REJECT
    assert check_recipient("", "b@x.example", idx) is None


class Boom:
    def scan(self, stream):
        raise ScannerError("clamd down")


def test_evaluate_maps_adapter_errors_and_never_fails_open() -> None:
    def no_model():
        raise ModelError("no model")

    def no_store():
        raise StoreError("db down")

    v = evaluate(ENV, MSG, io.BytesIO(b"x"), Boom(), no_model, no_store, POLICY)
    assert v.action is Action.TEMPFAIL and "antivirus=error" in v.summary


def test_oversize_actions() -> None:
    v = evaluate(ENV, MSG, None, None, lambda: None, lambda: lists(), Policy(oversize_action="reject"),
                 oversize=True)
    assert v.action is Action.REJECT and v.smtp_reply[0] == "552"
    v = evaluate(ENV, MSG, None, None, lambda: None, lambda: lists(), Policy(oversize_action="accept"),
                 oversize=True)
    assert v.action is Action.ACCEPT and "oversize" in v.summary


def test_incidents_are_logged_once_not_per_message(caplog: pytest.LogCaptureFixture) -> None:
    from stronghold.service import Incidents
    incidents = Incidents()
    with caplog.at_level("WARNING"):
        for _ in range(50):
            incidents.failed("clamd", "down")
        incidents.ok("clamd")
        incidents.ok("clamd")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["clamd failing: down", "clamd recovered"]
