"""Every combination of what the precedence table looks at, decided three ways that must agree.

A combination is: a virus or not; the recipient's own block and allow entries; the global
block and allow entries; a high, mid or low score; no failure, or clamd, the model or the
database failing under each ``on_*_error`` choice.  Each is decided

1. by ``expected`` below: the rules as docs/precedence.md states them, written as plain ifs
   (independent of ``precedence.PRECEDENCE``, so a change to the table shows up here);
2. by the table: ``precedence.check_recipient`` at RCPT time, then ``precedence.decide``;
3. by the milter in-process (pymilter's TestCtx), the way Postfix drives it, with stand-ins
   for clamd, the model and the lists beside a real SQLite store.

Two recipients: r1 has the recipient entries, r2 none, so per-recipient outcomes and their
routing (drop, hold, deliver) are exercised too.  RCPT time must agree with end of message:
a recipient refused at RCPT time is one that end of message refuses by the same row or an
earlier one, never one it delivers.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import Milter
import mime
import pytest
from Milter import testctx

from stronghold.antivirus import ScannerError, ScanResult
from stronghold.authres import AuthResults
from stronghold.classifier import Score
from stronghold.findings import Findings
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.milter import factory
from stronghold.modelfile import ModelError, Passport
from stronghold.policy import Policy
from stronghold.precedence import PRECEDENCE, check_recipient, decide
from stronghold.service import Outcome, Service
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.verdict import Action, Category, Check, Envelope, RecipientDecision, Route, Verdict
from tests.unit.test_milter_module import NOREPLY_BITS

SENDER = "news@friend.example"
R1, R2 = "r1@example.com", "r2@example.com"  # r1 has the recipient's entries, r2 none
GATEWAY = "gw.test.example"  # auth_mode = header: the gateway in front vouches for the sender
AUTH = AuthResults(f"header {GATEWAY}", spf="pass", spf_domain="friend.example",
                   dkim=(("friend.example", "pass"),), from_domain="friend.example")
MARKER = b"X5O-THIS-STANDS-FOR-A-VIRUS"
SCORES = {"high": 0.995, "mid": 0.95, "low": 0.10}  # thresholds: spam 0.90, reject 0.99
SETTINGS = {"spam_threshold": 0.9, "reject_threshold": 0.99, "spam_action": "tag", "spam_action_high": "reject",
            "virus_action": "reject", "auth_mode": "header", "authserv_id": GATEWAY, "lists_refresh_seconds": 0}
ERRORS = {"clamd": "clamd down", "model": "model file missing", "store": "database down"}
SETTING = {"clamd": "on_scanner_error", "model": "on_model_error", "store": "on_store_error"}
BLOCKED_REPLY = ("550", "5.7.1", "Sender is blocked")
POLICY = Policy(spam_threshold=0.9, reject_threshold=0.99, spam_action=Action.TAG,  # what SETTINGS say
                spam_action_high=Action.REJECT)


@dataclass(frozen=True)
class Combo:
    virus: bool
    rcpt_block: bool
    rcpt_allow: bool
    global_block: bool
    global_allow: bool
    score: str  # high / mid / low
    failure: str  # none / clamd / model / store
    on_error: str  # what the failing check's on_*_error says

    def lists(self) -> ListIndex:
        wanted = [(self.rcpt_block, R1, "block", SENDER), (self.rcpt_allow, R1, "allow", "@friend.example"),
                  (self.global_block, None, "block", "@friend.example"),
                  (self.global_allow, None, "allow", "*.friend.example")]
        return ListIndex(ListEntry(i, owner, kind, pattern) for i, (on, owner, kind, pattern)
                         in enumerate(wanted, 1) if on)

    def raw(self) -> bytes:
        return (f"From: News <{SENDER}>\nTo: {R1}, {R2}\nSubject: {self}\n"
                f"Authentication-Results: {GATEWAY}; spf=pass smtp.mailfrom={SENDER}; dkim=pass "
                "header.d=friend.example\n\nThis week's offers.\n").encode() + (MARKER + b"\n" if self.virus else b"")


def combos() -> list[Combo]:
    out = []
    for virus, rb, ra, gb, ga, score, failure in itertools.product(
            (False, True), (False, True), (False, True), (False, True), (False, True), SCORES,
            ("none", "clamd", "model", "store")):
        for on_error in (("tempfail",) if failure == "none" else ("tempfail", "reject", "accept")):
            out.append(Combo(virus, rb, ra, gb, ga, score, failure, on_error))
    return out


# -- 1. the rules, stated independently of the table --------------------------------

ROWS = ("size", "antivirus", "lists", "classifier", "auth", "recipient-block", "recipient-allow", "global-block",
        "global-allow", "dmarc", "score")
REFUSAL = {"tempfail": Action.TEMPFAIL, "reject": Action.REJECT}


def expected(c: Combo, rcpt: str) -> tuple[str, Action, Category]:
    """(the row that decides, the recipient's own outcome, its category) at end of message."""
    failing = c.failure if c.on_error != "accept" else "none"
    if failing == "clamd":
        return "antivirus", REFUSAL[c.on_error], Category.ERROR
    if c.virus and c.failure != "clamd":  # a crashed scanner found nothing: the virus is not known
        return "antivirus", Action.REJECT, Category.VIRUS
    if failing == "store":
        return "lists", REFUSAL[c.on_error], Category.ERROR
    if failing == "model":
        return "classifier", REFUSAL[c.on_error], Category.ERROR
    if c.failure != "store":
        own = rcpt == R1
        if own and c.rcpt_block:
            return "recipient-block", Action.REJECT, Category.BLOCKED
        if own and c.rcpt_allow:  # the sender is authenticated, so the entry applies
            return "recipient-allow", Action.ACCEPT, Category.ALLOWED
        if c.global_block:
            return "global-block", Action.REJECT, Category.BLOCKED
        if c.global_allow:
            return "global-allow", Action.ACCEPT, Category.ALLOWED
    if c.failure == "model":
        return "score", Action.ACCEPT, Category.CLEAN  # not scored
    action = {"high": Action.REJECT, "mid": Action.TAG, "low": Action.ACCEPT}[c.score]
    return "score", action, Category.CLEAN if c.score == "low" else Category.SPAM


def refused_at_rcpt(c: Combo, rcpt: str) -> bool:
    """The envelope sender is blocked for ``rcpt`` and no allow entry of theirs matches it
    (with the database down nothing is known yet: end of message applies on_store_error)."""
    own = rcpt == R1
    return c.failure != "store" and ((own and c.rcpt_block) or (c.global_block and not (own and c.rcpt_allow)))


@dataclass(frozen=True)
class Answer:
    action: Action
    category: Category
    reply: tuple[str, str, str] | None
    recipients: tuple[tuple[str, Action, Category, Route, str], ...]  # (address, action, category, route, row)


def expected_answer(c: Combo, recipients: tuple[str, ...]) -> Answer:
    """Each recipient's outcome, routed (docs/precedence.md), and the message's answer."""
    own = {r: expected(c, r) for r in recipients}
    category = min(own.values(), key=lambda o: (ROWS.index(o[0]), o[2] is Category.CLEAN))[2]
    actions = {action for _, action, _ in own.values()}
    if category is Category.ERROR:  # a failed check refuses the message, unrouted
        action = actions.pop()
        reply = ("451", "4.7.1", "Temporary filtering failure, please try again later") \
            if action is Action.TEMPFAIL else ("550", "5.7.1", "Message could not be checked")
        return Answer(action, category, reply, tuple((r, action, cat, Route.REFUSE, row)
                                                     for r, (row, _, cat) in own.items()))
    if actions == {Action.REJECT}:
        if category is Category.VIRUS:
            reply = ("554", "5.7.0", "Message contains a virus: Test.Marker")
        elif all(cat is Category.BLOCKED for _, _, cat in own.values()):
            reply = BLOCKED_REPLY
        else:
            reply = ("550", "5.7.1", "Message rejected as spam")
        return Answer(Action.REJECT, category, reply, tuple((r, Action.REJECT, cat, Route.REFUSE, row)
                                                            for r, (row, _, cat) in own.items()))
    routed = []
    for r, (row, action, cat) in own.items():
        if action is Action.REJECT:
            routed.append((r, action, cat, Route.DROP, row))
        elif action is Action.TAG and Action.ACCEPT in actions:  # one copy, one set of headers: clean wins
            routed.append((r, Action.QUARANTINE, cat, Route.HOLD, row))
        else:
            routed.append((r, action, cat, Route.DELIVER_TAGGED if action is Action.TAG else Route.DELIVER, row))
    delivered = {route for _, _, _, route, _ in routed if route.delivered}
    message = Action.TAG if Route.DELIVER_TAGGED in delivered else Action.ACCEPT if delivered else Action.QUARANTINE
    return Answer(message, category, None, tuple(routed))


# -- 2. the table ---------------------------------------------------------------------

def findings(c: Combo, recipients: tuple[str, ...]) -> Findings:
    """What engine.gather finds with the stand-ins below (the milter's side gathers for real)."""
    scan = None if c.failure == "clamd" else ScanResult("Test.Marker" if c.virus else None)
    infected = scan is not None and scan.infected
    scored = not infected and c.failure != "model"  # no model is asked about an infected message
    lists = None if c.failure == "store" else c.lists()
    may_allow = lists is not None and (c.global_allow or (c.rcpt_allow and R1 in recipients))
    return Findings(scan=scan, scan_error=ERRORS["clamd"] if c.failure == "clamd" else None,
                    score=Score(SCORES[c.score], ()) if scored else None,
                    model_threshold=0.5 if scored else None,
                    model_error=ERRORS["model"] if c.failure == "model" and not infected else None,
                    lists=lists, store_error=ERRORS["store"] if c.failure == "store" else None,
                    auth=AUTH if may_allow else None)


def answer(v: Verdict) -> Answer:
    return Answer(v.action, v.category, v.smtp_reply,
                  tuple((d.recipient, d.action, d.category, d.route, d.rule) for d in v.decisions))


# -- 3. the milter, with stand-ins for clamd, the model and the lists -------------------

class FakeScanner:
    failing = False

    def scan(self, stream: Any) -> ScanResult:
        if self.failing:
            raise ScannerError(ERRORS["clamd"])
        return ScanResult("Test.Marker" if MARKER in stream.read() else None)


class FakeModel:
    spam_threshold = 0.5  # the policy's spam_threshold (0.9) overrides it
    passport = Passport(file_sha256="f" * 64, created=0.0)

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def score(self, tokens: Any, **_: Any) -> Score:
        return Score(self.probability, ())


class FakeModels:
    """Stands in for ModelHolder."""

    generation = 1
    external_generation = None

    def __init__(self) -> None:
        self.current: FakeModel | None = None

    def __call__(self) -> FakeModel:
        if self.current is None:
            raise ModelError(ERRORS["model"])
        return self.current


class FakeLists:
    """Stands in for the cached list index (Service.lists)."""

    def __init__(self) -> None:
        self.index: ListIndex | None = None

    def __call__(self) -> ListIndex:
        if self.index is None:
            raise StoreError(ERRORS["store"])
        return self.index


@dataclass
class Run:
    rcpt_codes: dict[str, int]
    rcpt_replies: dict[str, tuple[str, ...] | None]
    rcpt_decisions: dict[str, RecipientDecision]
    code: int | None = None
    reply: tuple[str, ...] | None = None
    delrcpt: tuple[str, ...] = ()
    flag: str | None = None
    verdict: Verdict | None = None


@pytest.fixture
def milter(make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = make_config(models_dir=tmp_path / "models", **SETTINGS)
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    scanner, models, lists = FakeScanner(), FakeModels(), FakeLists()
    service = Service(cfg, store=store, scanner=scanner)
    service.model = models  # type: ignore[assignment]
    service.lists = lists  # type: ignore[method-assign]
    seen: dict[str, Any] = {"rcpt": {}, "incidents": []}
    record, record_rcpt = service.record, service.record_rcpt_reject
    failed, ok = service.incidents.failed, service.incidents.ok

    def spy_record(envelope: Envelope, msg: Any, outcome: Outcome) -> None:
        seen["verdict"] = outcome.verdict
        record(envelope, msg, outcome)

    def spy_rcpt(envelope: Envelope, decision: RecipientDecision) -> None:
        seen["rcpt"][decision.recipient] = decision
        record_rcpt(envelope, decision)

    monkeypatch.setattr(service, "record", spy_record)
    monkeypatch.setattr(service, "record_rcpt_reject", spy_rcpt)
    monkeypatch.setattr(service.incidents, "failed", lambda kind, detail: (seen["incidents"].append((kind, False)),
                                                                           failed(kind, detail)))
    monkeypatch.setattr(service.incidents, "ok", lambda kind: (seen["incidents"].append((kind, True)), ok(kind)))
    monkeypatch.setattr(Milter, "factory", factory(service))
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NOREPLY_BITS, 0, 0])
    ctx = testctx.TestCtx()
    assert ctx._connect(ip="192.0.2.7") == Milter.CONTINUE

    def send(c: Combo) -> Run:
        """One message the way Postfix sends it: every RCPT asked, DATA only if one was accepted."""
        service.policy = replace(service.policy, **({SETTING[c.failure]: c.on_error} if c.failure in SETTING else {}))
        scanner.failing = c.failure == "clamd"
        models.current = None if c.failure == "model" else FakeModel(SCORES[c.score])
        lists.index = None if c.failure == "store" else c.lists()
        seen["rcpt"], seen["incidents"] = {}, []
        seen.pop("verdict", None)
        ctx._body, ctx._delrcpt, ctx._reply = None, [], None
        msg = mime.message_from_file(io.BytesIO(c.raw()))
        ctx._msg = msg
        assert ctx._envfrom(f"<{SENDER}>") == Milter.CONTINUE
        codes, replies = {}, {}
        for rcpt in (R1, R2):
            ctx._reply = None
            codes[rcpt] = ctx._envrcpt(f"<{rcpt}>")
            replies[rcpt] = ctx._reply
        run = Run(codes, replies, dict(seen["rcpt"]))
        if Milter.CONTINUE not in codes.values():
            ctx.getpriv().abort()  # no recipient left: the client gives up the transaction
            return run
        ctx._reply = None
        assert ctx._data() == Milter.CONTINUE
        for name, value in msg.items():
            assert ctx._header(name, value) == Milter.CONTINUE
        assert ctx._eoh() == Milter.CONTINUE
        assert ctx._feed_body(io.BytesIO(msg.as_bytes().split(b"\n\n", 1)[1])) == Milter.CONTINUE
        run.code = ctx._eom()
        run.reply, run.delrcpt, run.flag = ctx._reply, tuple(ctx._delrcpt), ctx._msg["X-Spam-Flag"]
        run.verdict = seen.get("verdict")
        return run

    yield send, seen
    ctx._close()
    service.db.drain(10)
    store.dispose()


MILTER_CODE = {Action.REJECT: Milter.REJECT, Action.TEMPFAIL: Milter.TEMPFAIL, Action.TAG: Milter.ACCEPT,
               Action.ACCEPT: Milter.ACCEPT, Action.QUARANTINE: Milter.DISCARD}


def test_every_combination_agrees_through_the_table_and_the_milter(milter) -> None:
    send, seen = milter
    rank = {rule.name: i for i, rule in enumerate(PRECEDENCE)}
    all_combos = combos()
    assert len(all_combos) == 960
    wrong: list[str] = []

    def check(ok: bool, c: Combo, what: str) -> None:
        if not ok:
            wrong.append(f"{c}: {what}")

    for c in all_combos:
        both = (R1, R2)
        msg = parse(c.raw().replace(b"\n", b"\r\n"))
        # the table over both recipients, against the rules as written above
        whole = decide(Envelope(SENDER, both), msg, findings(c, both), replace(POLICY, **_errors(c)))
        check(answer(whole) == expected_answer(c, both), c, f"table {answer(whole)} != rules "
                                                            f"{expected_answer(c, both)}")
        # RCPT time, through the same table with the envelope alone
        index = None if c.failure == "store" else c.lists()  # the service accepts every RCPT when the store is down
        at_rcpt = {r: check_recipient(SENDER, r, index) if index is not None else None for r in both}
        for r, d in at_rcpt.items():
            check((d is not None) == refused_at_rcpt(c, r), c, f"RCPT time for {r}: {d}")
            if d is not None:  # end of message refuses it too, by the same row or an earlier one
                eom = next(x for x in whole.decisions if x.recipient == r)
                check(rank[eom.rule] <= rank[d.rule] and eom.action in (Action.REJECT, Action.TEMPFAIL)
                      and not eom.route.delivered, c, f"RCPT refused {r} by {d.rule}, end of message says {eom}")
                check(eom.rule != d.rule or eom.category is Category.BLOCKED, c, f"{r}: {eom.category}")
        # end of message over the recipients RCPT time left: the rules, the table and the milter
        left = tuple(r for r in both if at_rcpt[r] is None)
        table = decide(Envelope(SENDER, left), msg, findings(c, left), replace(POLICY, **_errors(c))) if left else None
        run = send(c)
        check({r for r, code in run.rcpt_codes.items() if code == Milter.REJECT} == set(both) - set(left), c,
              f"milter RCPT codes {run.rcpt_codes}")
        check(all(run.rcpt_replies[r] == BLOCKED_REPLY for r in both if r not in left), c, "RCPT reply")
        check({r: (d.rule, d.action, d.category) for r, d in run.rcpt_decisions.items()}
              == {r: (d.rule, d.action, d.category) for r, d in at_rcpt.items() if d is not None}, c,
              f"milter RCPT decisions {run.rcpt_decisions}")
        if table is None:
            check(run.verdict is None and run.code is None, c, "no DATA without a recipient")
            continue
        want = expected_answer(c, left)
        check(answer(table) == want, c, f"table {answer(table)} != rules {want}")
        check(run.verdict == table, c, f"milter verdict {run.verdict} != table {table}")
        check(run.code == MILTER_CODE[table.action], c, f"milter answered {run.code} for {table.action}")
        if table.action in (Action.REJECT, Action.TEMPFAIL):
            check(run.reply == table.smtp_reply, c, f"milter reply {run.reply}")
        elif table.delivered:
            check(set(run.delrcpt) == {f"<{r}>" for r in left if r not in table.delivered}, c, f"{run.delrcpt}")
            check(run.flag == ("YES" if table.action is Action.TAG else "NO"), c, f"X-Spam-Flag {run.flag}")
        # clamd incidents come from the verdict's typed checks, not from its trace
        clamd = [good for kind, good in seen["incidents"] if kind == "clamd"]
        check(clamd == [c.failure != "clamd"], c, f"clamd incidents {clamd}")
        check(table.check(Check.ANTIVIRUS) is not None, c, "antivirus check recorded")
    assert not wrong, f"{len(wrong)} of {len(all_combos)} combinations disagree, e.g.\n" + "\n".join(wrong[:5])


def _errors(c: Combo) -> dict[str, str]:
    return {SETTING[c.failure]: c.on_error} if c.failure in SETTING else {}
