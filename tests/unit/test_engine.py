"""The precedence table, every branch, with stand-in checks (the real ones are tested in e2e)."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from stronghold.antivirus import ScannerError, ScanResult
from stronghold.authres import AuthResults
from stronghold.classifier import Clue, Score
from stronghold.engine import evaluate
from stronghold.findings import Findings
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.modelfile import ModelError
from stronghold.policy import Policy
from stronghold.precedence import check_recipient, decide
from stronghold.routing import ROUTES, hold_failed
from stronghold.store.errors import StoreError
from stronghold.verdict import Action, Category, Envelope, Route

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
                                   model_threshold=0.9, lists=idx if idx is not None else lists(), auth=AUTH)
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


def routes(verdict):
    return {d.recipient: d.route for d in verdict.decisions}


def test_default_policy_tags_even_the_highest_scores() -> None:
    v = decide(ENV, MSG, found(0.9999), Policy())
    assert v.action is Action.TAG and v.smtp_reply is None
    assert set(routes(v).values()) == {Route.DELIVER_TAGGED}
    assert dict(v.headers)["X-Spam-Flag"] == "YES" and v.subject_prefix == "[SPAM]"


def test_allowing_recipient_gets_it_clean_the_other_gets_it_held() -> None:
    """a allows the sender, b's score says tag: a's copy is clean, b's is held, not tagged for both."""
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.9999, idx=idx), Policy())
    assert routes(v) == {"a@x.example": Route.DELIVER, "b@x.example": Route.HOLD}
    assert by_rcpt(v)["b@x.example"] == (Action.QUARANTINE, Category.SPAM)
    assert v.action is Action.ACCEPT and v.delivered == ("a@x.example",)
    assert [d.recipient for d in v.held] == ["b@x.example"] and not v.drop_recipients
    h = dict(v.headers)
    assert h["X-Spam-Flag"] == "NO" and h["X-Spam-Status"].startswith("No ") and not v.subject_prefix
    assert "b@x.example" not in h["X-Spam-Status"] and "route=hold" not in h["X-Spam-Status"]
    assert "route=hold" in v.summary  # each recipient's routing is in the trace


def test_admin_reject_policy_drops_only_that_recipient() -> None:
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.999, idx=idx), POLICY)  # POLICY: spam_action_high = reject
    assert routes(v) == {"a@x.example": Route.DELIVER, "b@x.example": Route.DROP}
    assert v.drop_recipients == ("b@x.example",) and v.action is Action.ACCEPT
    assert by_rcpt(v)["b@x.example"] == (Action.REJECT, Category.SPAM)


def test_three_recipients_three_outcomes() -> None:
    env = Envelope("s@env.example", ("a@x.example", "b@x.example", "c@x.example"), queue_id="Q3")
    idx = lists(("a@x.example", "block", "@from.example"), ("c@x.example", "allow", "s@env.example"))
    v = decide(env, MSG, found(0.95, idx=idx), Policy(reject_threshold=0.99, spam_action=Action.QUARANTINE))
    assert routes(v) == {"a@x.example": Route.DROP, "b@x.example": Route.HOLD, "c@x.example": Route.DELIVER}
    assert [d.action for d in v.decisions] == [Action.REJECT, Action.QUARANTINE, Action.ACCEPT]
    assert v.action is Action.ACCEPT
    status = dict(v.headers)["X-Spam-Status"]
    assert "allow=match" in status  # c's own step, on c's own copy
    assert "block" not in status and "a@x.example" not in status


def test_tag_only_shares_the_delivered_copy_with_other_taggers() -> None:
    idx = lists(("a@x.example", "block", "@from.example"))
    v = decide(ENV, MSG, found(0.95, idx=idx), POLICY)
    assert routes(v) == {"a@x.example": Route.DROP, "b@x.example": Route.DELIVER_TAGGED}
    assert v.action is Action.TAG and v.subject_prefix == "[SPAM]"


def test_all_quarantine_holds_every_copy_and_delivers_none() -> None:
    policy = Policy(reject_threshold=0.99, spam_action=Action.QUARANTINE)
    v = decide(ENV, MSG, found(0.95), policy)
    assert v.action is Action.QUARANTINE and not v.delivered and v.headers == ()
    assert [d.recipient for d in v.held] == ["a@x.example", "b@x.example"]


def test_virus_quarantine_holds_for_everyone_whatever_the_lists() -> None:
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.0, virus="Eicar", idx=idx), Policy(virus_action=Action.QUARANTINE))
    assert v.action is Action.QUARANTINE and v.virus == "Eicar" and v.smtp_reply is None
    assert {d.category for d in v.held} == {Category.VIRUS} and len(v.held) == 2


def test_every_recipient_reject_is_refused_at_smtp() -> None:
    idx = lists(("a@x.example", "block", "@from.example"))
    v = decide(ENV, MSG, found(0.999, idx=idx), POLICY)  # a blocked, b spam reject
    assert v.action is Action.REJECT and v.smtp_reply[0] == "550"
    assert set(routes(v).values()) == {Route.REFUSE}


def test_a_held_copy_of_an_oversize_message_is_refused_not_truncated() -> None:
    v = decide(ENV, MSG, found(0.95, oversize=True), Policy(spam_action=Action.QUARANTINE))
    assert v.action is Action.REJECT and v.smtp_reply[0] == "552" and not v.held


def test_hold_failure_tempfails_every_recipient() -> None:
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = hold_failed(decide(ENV, MSG, found(0.9999, idx=idx), Policy()), "database is locked")
    assert v.action is Action.TEMPFAIL and v.smtp_reply[:2] == ("451", "4.7.1")
    assert not v.delivered and not v.held and v.headers == ()
    assert {d.action for d in v.decisions} == {Action.TEMPFAIL}
    assert "quarantine=error(database is locked)" in v.summary


@pytest.mark.parametrize("outcomes, expected", [
    ((Action.REJECT, Action.REJECT), (Route.REFUSE, Route.REFUSE)),
    ((Action.REJECT, Action.ACCEPT), (Route.DROP, Route.DELIVER)),
    ((Action.REJECT, Action.QUARANTINE), (Route.DROP, Route.HOLD)),
    ((Action.TAG, Action.TAG), (Route.DELIVER_TAGGED, Route.DELIVER_TAGGED)),
    ((Action.TAG, Action.ACCEPT), (Route.HOLD, Route.DELIVER)),
    ((Action.TAG, Action.QUARANTINE), (Route.DELIVER_TAGGED, Route.HOLD)),
])
def test_routing_table(outcomes, expected) -> None:
    from stronghold.routing import route
    from stronghold.verdict import RecipientDecision
    ds = [RecipientDecision(f"r{i}@x.example", a, Category.SPAM, "r") for i, a in enumerate(outcomes)]
    v = route(ds, [], 0.5, 0.4, (), Policy(), category=Category.SPAM)
    assert tuple(d.route for d in v.decisions) == expected


def test_routing_table_covers_every_outcome_a_recipient_can_have() -> None:
    assert {r.outcome for r in ROUTES} == {Action.ACCEPT, Action.TAG, Action.QUARANTINE, Action.REJECT}


def test_multi_recipient_header_does_not_name_recipients_or_lists() -> None:
    idx = lists(("a@x.example", "allow", "@env.example"))
    v = decide(ENV, MSG, found(0.2, idx=idx), POLICY)
    status = dict(v.headers)["X-Spam-Status"]
    assert "a@x.example" not in status and "@env.example" not in status and "allow" not in status
    assert "recipients=2" in status
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


def test_rcpt_time_leaves_the_global_block_to_end_of_message_for_a_recipient_with_allow_entries() -> None:
    """RCPT time cannot see the header From, which a recipient's allow entry may match: for them
    the global block is decided at end of message, where the allow entry comes first."""
    env = Envelope("s@env.example", ("a@x.example",))
    idx = lists((None, "block", "@env.example"), ("a@x.example", "allow", "s@from.example"))
    assert check_recipient("s@env.example", "a@x.example", idx) is None
    assert decide(env, MSG, found(0.1, idx=idx), POLICY).category is Category.ALLOWED
    d = check_recipient("s@env.example", "c@x.example", idx)  # no allow entries: refused at once
    assert d is not None and d.rule == "global-block"
    other = lists((None, "block", "@env.example"), ("a@x.example", "allow", "@elsewhere.example"))
    assert check_recipient("s@env.example", "a@x.example", other) is None
    v = decide(env, MSG, found(0.1, idx=other), POLICY)  # no entry of theirs matches: blocked after all
    assert v.category is Category.BLOCKED and v.decisions[0].rule == "global-block"


class Boom:
    def scan(self, stream):
        raise ScannerError("clamd down")


def test_evaluate_maps_adapter_errors_and_never_fails_open() -> None:
    def no_model():
        raise ModelError("no model")

    def no_store():
        raise StoreError("db down")

    def run(**policy: str):
        return evaluate(ENV, MSG, io.BytesIO(b"x"), Boom(), no_model, no_store, Policy(**policy), tokens=set())

    def failed(v) -> list[str]:
        return [f"{s.step}:{s.detail}" for s in v.trace if s.outcome == "error"]

    # each of the three failures tempfails by default, in turn, once the one before it is let through
    v = run()
    assert v.action is Action.TEMPFAIL and v.category is Category.ERROR and v.smtp_reply[0] == "451"
    assert failed(v) == ["antivirus:clamd down"]
    v = run(on_scanner_error="accept")
    assert v.action is Action.TEMPFAIL and v.category is Category.ERROR
    assert failed(v) == ["antivirus:clamd down", "lists:db down"]
    v = run(on_scanner_error="accept", on_store_error="accept")
    assert v.action is Action.TEMPFAIL and v.category is Category.ERROR
    assert failed(v) == ["antivirus:clamd down", "lists:db down", "classifier:no model"]
    v = run(on_scanner_error="accept", on_store_error="accept", on_model_error="reject")
    assert v.action is Action.REJECT and v.category is Category.ERROR and v.smtp_reply[0] == "550"
    # only when the admin accepts all three does the message pass, unscored and saying why
    v = run(on_scanner_error="accept", on_store_error="accept", on_model_error="accept")
    assert v.action is Action.ACCEPT and v.score is None
    assert failed(v) == ["antivirus:clamd down", "lists:db down", "classifier:no model"]
    assert all(d.reason == "not scored" for d in v.decisions)


def test_oversize_actions() -> None:
    v = evaluate(ENV, MSG, None, None, lambda: None, lambda: lists(), Policy(oversize_action="reject"),
                 tokens=set(), oversize=True)
    assert v.action is Action.REJECT and v.smtp_reply[0] == "552"
    v = evaluate(ENV, MSG, None, None, lambda: None, lambda: lists(), Policy(oversize_action="accept"),
                 tokens=set(), oversize=True)
    assert v.action is Action.ACCEPT and "oversize" in v.summary


def test_incidents_are_logged_once_not_per_message(caplog: pytest.LogCaptureFixture) -> None:
    from stronghold.incidents import Incidents
    incidents = Incidents()
    with caplog.at_level("WARNING"):
        for _ in range(50):
            incidents.failed("clamd", "down")
        incidents.ok("clamd")
        incidents.ok("clamd")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["clamd failing: down", "clamd recovered"]


def test_each_recipient_is_judged_at_their_own_threshold() -> None:
    """b chose 0.6 on their settings page; a has the system's 0.9: a 0.7 message is spam for b only."""
    idx = ListIndex([], thresholds={"b@x.example": 0.6})
    v = decide(ENV, MSG, found(0.7, idx=idx), POLICY)
    # spam for b, clean for a: a gets the copy clean, b's goes to the quarantine (their Junk page)
    assert by_rcpt(v) == {"a@x.example": (Action.ACCEPT, Category.CLEAN),
                          "b@x.example": (Action.QUARANTINE, Category.SPAM)}
    own = next(d for d in v.decisions if d.recipient == "b@x.example")
    assert "threshold=own(0.6000)" in [str(s) for s in own.trace]
    stricter = decide(ENV, MSG, found(0.95, idx=ListIndex([], thresholds={"a@x.example": 0.97})), POLICY)
    assert by_rcpt(stricter)["a@x.example"] == (Action.ACCEPT, Category.CLEAN)  # 0.95 < a's own 0.97
    assert by_rcpt(stricter)["b@x.example"] == (Action.QUARANTINE, Category.SPAM)
    alone = decide(Envelope("s@env.example", ("b@x.example",)), MSG, found(0.7, idx=idx), POLICY)
    assert by_rcpt(alone) == {"b@x.example": (Action.TAG, Category.SPAM)}  # alone: tagged into Junk


# -- the table itself -------------------------------------------------------------------

def test_the_table_has_message_rows_first_and_a_last_row_that_always_decides() -> None:
    from stronghold.precedence import MESSAGE, PRECEDENCE, Facts
    scopes = [rule.scope for rule in PRECEDENCE]
    assert scopes == sorted(scopes, key=lambda s: s != MESSAGE)  # message rows, then recipient rows
    assert len({rule.name for rule in PRECEDENCE}) == len(PRECEDENCE)
    last = PRECEDENCE[-1]
    for score in (None, 0.1, 0.95, 0.9999):
        facts = Facts(POLICY, lists(), [], [], found(score) if score is not None else Findings())
        assert last.check(facts, "a@x.example", []) is not None  # nobody falls off the end of the table
    assert [r.name for r in PRECEDENCE if r.at_rcpt] == ["recipient-block", "recipient-allow", "global-block",
                                                           "global-allow"]


def test_the_docs_list_the_rows_in_the_tables_order() -> None:
    import re
    from pathlib import Path

    from stronghold.precedence import PRECEDENCE
    text = (Path(__file__).resolve().parents[2] / "docs" / "precedence.md").read_text()
    section = text.split("## The table", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| \d+ \| `([a-z-]+)` \|", section, re.M) == [r.name for r in PRECEDENCE]


def test_every_recipient_decision_names_its_row_and_the_score_leaves_a_step() -> None:
    idx = lists(("a@x.example", "block", "@from.example"))
    v = decide(ENV, MSG, found(0.95, idx=idx), POLICY)
    a, b = v.decisions
    assert (a.rule, b.rule) == ("recipient-block", "score")
    assert "score=spam(0.9500>=0.9000)" in [str(s) for s in b.trace]
    assert not any(s.step == "score" for s in a.trace)  # a's walk ended at their block list
    clean = decide(ENV, MSG, found(0.1), POLICY).decisions[0]
    assert "score=clean(0.1000<0.9000)" in [str(s) for s in clean.trace]
    high = decide(ENV, MSG, found(0.995), POLICY).decisions[0]
    assert "score=spam-high(0.9950>=0.9900)" in [str(s) for s in high.trace]
    unscored = decide(ENV, MSG, replace(found(0.1), score=None), POLICY).decisions[0]
    assert (unscored.reason, [str(s) for s in unscored.trace][:1]) == ("not scored", ["score=none(not scored)"])


def test_the_message_category_comes_from_the_earliest_row() -> None:
    # a blocked, b spam: the block row comes before the score row
    v = decide(ENV, MSG, found(0.95, idx=lists(("a@x.example", "block", "@from.example"))), POLICY)
    assert by_rcpt(v) == {"a@x.example": (Action.REJECT, Category.BLOCKED), "b@x.example": (Action.TAG, Category.SPAM)}
    assert v.category is Category.BLOCKED
    # a allowed by their own list (row 7), b blocked by the global list (row 8)
    idx = lists(("a@x.example", "allow", "s@env.example"), (None, "block", "@env.example"))
    assert decide(ENV, MSG, found(0.1, idx=idx), POLICY).category is Category.ALLOWED
    # within the score row, spam before clean
    v = decide(ENV, MSG, found(0.7, idx=ListIndex([], thresholds={"b@x.example": 0.6})), POLICY)
    assert v.category is Category.SPAM


def test_rcpt_time_walks_the_same_rows_with_the_envelope_alone() -> None:
    idx = lists(("a@x.example", "block", "s@env.example"), (None, "block", "@env.example"),
                ("b@x.example", "allow", "@env.example"))
    d = check_recipient("s@env.example", "a@x.example", idx)
    assert d is not None and d.rule == "recipient-block"
    assert [str(s) for s in d.trace] == ["block=rcpt(a@x.example block #1 s@env.example ~ envelope s@env.example)"]
    assert check_recipient("s@env.example", "b@x.example", idx) is None  # b's allow entry: decided at end of message
    d = check_recipient("s@env.example", "c@x.example", idx)
    assert d is not None and d.rule == "global-block" and d.category is Category.BLOCKED


@pytest.mark.parametrize("field, check", [("scan_error", "antivirus"), ("model_error", "classifier"),
                                          ("store_error", "lists")])
def test_the_verdict_says_which_check_failed(field: str, check: str) -> None:
    from stronghold.verdict import Check
    broken = found(0.1, **{field: "it broke", "scan": None if field == "scan_error" else ScanResult(None)})
    for policy in (POLICY, Policy(**{**POLICY.__dict__, "on_scanner_error": "accept", "on_model_error": "accept",
                                     "on_store_error": "accept"})):
        v = decide(ENV, MSG, broken, policy)
        failed = {c.check.value: c.error for c in v.checks if c.failed}
        assert failed == {check: "it broke"}
        assert {c.check for c in v.checks} == set(Check)  # each ran (found() has auth results too)
    assert decide(ENV, MSG, found(0.1), POLICY).check(Check.ANTIVIRUS) is not None
    assert not any(c.failed for c in decide(ENV, MSG, found(0.1), POLICY).checks)
