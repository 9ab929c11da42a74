"""The scoring core: envelope + message -> Verdict, with a trace.

``PRECEDENCE`` below is the single statement of the rules: an ordered table
of named rows, and for each recipient the first row that decides wins.  The
rows that concern the whole message (size, antivirus, the check failures)
come first and decide for every recipient at once; the rest are walked per
recipient.  Every path walks the same table: end of message (``decide``,
which the milter and ``stronghold scan`` reach through ``evaluate``) with
everything the checks found, and RCPT time (``check_recipient``) with the
envelope alone, passing over the rows that need the message.  Each row that
looks at something appends a ``TraceStep``; the message's category is the
category of the decision made by the earliest row.  docs/precedence.md
explains the rows.

Then ``ROUTES`` (another table, first match wins) sends each recipient's
copy to the delivered copy, the quarantine, or away (``delrcpt``); the
message is refused at SMTP only when every recipient refuses it.  ``decide``
is pure; ``evaluate`` calls the scanner, the model and the lists through the
small interfaces passed in, and their typed errors become findings that the
table maps to the configured policy (tempfail by default: a crashed check is
never "nothing found").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import TYPE_CHECKING

from stronghold.allowrule import allow_candidates, allow_may_apply, authenticated_allow
from stronghold.antivirus import Scanner, ScannerError, ScanResult
from stronghold.authres import Authenticator, AuthResults
from stronghold.classifier import Model, ModelError, Score
from stronghold.config import Config
from stronghold.lists import ALLOW, BLOCK, ListIndex, sender_addresses
from stronghold.message import ParsedMessage
from stronghold.spool import Stream
from stronghold.store.errors import StoreError
from stronghold.verdict import (
    Action,
    Category,
    Check,
    CheckResult,
    Envelope,
    RecipientDecision,
    Route,
    TraceStep,
    Verdict,
)

if TYPE_CHECKING:
    from stronghold.personal import Layer

log = logging.getLogger(__name__)

REPLY_VIRUS = ("554", "5.7.0", "Message contains a virus: {name}")
REPLY_SPAM = ("550", "5.7.1", "Message rejected as spam")
REPLY_BLOCKED = ("550", "5.7.1", "Sender is blocked by the recipient")
REPLY_TEMPFAIL = ("451", "4.7.1", "Temporary filtering failure, please try again later")
REPLY_OVERSIZE = ("552", "5.3.4", "Message too big for the filter")
REPLY_UNCHECKED = ("550", "5.7.1", "Message could not be checked")


@dataclass(frozen=True)
class Policy:
    """The admin's choices that turn findings into actions."""

    spam_threshold: float | None = None  # None: the model's own threshold
    reject_threshold: float = 0.999
    spam_action: Action = Action.TAG
    spam_action_high: Action = Action.TAG
    virus_action: Action = Action.REJECT
    subject_prefix: str = "[SPAM]"
    on_scanner_error: str = "tempfail"
    on_model_error: str = "tempfail"
    on_store_error: str = "tempfail"
    oversize_action: str = "reject"
    dmarc_action: Action = Action.TAG
    on_dns_error: str = "unauthenticated"

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        return cls(
            spam_threshold=cfg.spam_threshold,
            reject_threshold=cfg.reject_threshold,
            spam_action=Action(cfg.spam_action),
            spam_action_high=Action(cfg.spam_action_high),
            virus_action=Action(cfg.virus_action),
            subject_prefix=cfg.subject_prefix,
            on_scanner_error=cfg.on_scanner_error,
            on_model_error=cfg.on_model_error,
            on_store_error=cfg.on_store_error,
            oversize_action=cfg.oversize_action,
            dmarc_action=Action(cfg.dmarc_action),
            on_dns_error=cfg.on_dns_error,
        )


@dataclass(frozen=True)
class Findings:
    """What the checks found; an error string where a check failed."""

    scan: ScanResult | None = None
    scan_error: str | None = None
    score: Score | None = None
    model_threshold: float | None = None
    model_error: str | None = None
    lists: ListIndex | None = None
    store_error: str | None = None
    oversize: bool = False
    notes: tuple[TraceStep, ...] = field(default_factory=tuple)
    auth: AuthResults | None = None  # gathered only when it can change the outcome
    personal: Mapping[str, Score] = field(default_factory=dict)  # recipient -> score with their own layer


# -- the precedence table ---------------------------------------------------------

@dataclass(frozen=True)
class Facts:
    """What one walk of the table knows: everything the checks found at end of
    message; at RCPT time the envelope sender and the lists alone."""

    policy: Policy
    lists: ListIndex | None
    senders: list[tuple[str, str]]  # the envelope sender, and at end of message the header From
    allowed: list[tuple[str, str]]  # those an allow entry may match (allowrule.allow_senders)
    found: Findings = field(default_factory=Findings)
    at_rcpt: bool = False

    @property
    def score(self) -> float | None:
        return self.found.score.probability if self.found.score is not None else None

    @property
    def threshold(self) -> float | None:
        return self.policy.spam_threshold if self.policy.spam_threshold is not None else self.found.model_threshold

    @property
    def dmarc_failed(self) -> str:
        """The From domain's p= when DMARC failed under quarantine/reject, else ""."""
        return self.found.auth.dmarc_failed_policy() if self.found.auth is not None else ""

    def threshold_for(self, rcpt: str) -> tuple[float | None, float | None]:
        """(the threshold ``rcpt`` is judged at, their own choice if they made one)."""
        threshold = self.threshold
        own = self.lists.threshold_for(rcpt) if self.lists is not None and threshold is not None else None
        return (own if own is not None else threshold), own


@dataclass(frozen=True)
class Ruling:
    """What a row decided; ``reply`` when it refuses the whole message at once."""

    action: Action
    category: Category
    reason: str
    reply: tuple[str, str, str] | None = None


MESSAGE = "message"  # the row looks at the message: it decides for every recipient at once
RECIPIENT = "recipient"  # the row is walked for each recipient

# A row's check: (what the walk knows, the recipient ("" for a message row), the trace to add to).
RowCheck = Callable[[Facts, str, list[TraceStep]], "Ruling | None"]


@dataclass(frozen=True)
class Rule:
    """One row of the precedence table."""

    name: str
    scope: str  # MESSAGE or RECIPIENT
    check: RowCheck
    decides: str  # what it decides, for people (docs/precedence.md has the same rows)
    categories: tuple[Category, ...]  # what its decisions are called, most telling first
    at_rcpt: bool = False  # answerable from the envelope alone: walked at RCPT time too


def _failed(check: Check, setting: str, detail: str, trace: list[TraceStep]) -> Ruling | None:
    """A failed check: the admin's ``on_*_error`` refuses the message, or (accept) the walk carries on."""
    trace.append(TraceStep(check.value, "error", detail[:200]))
    if setting == "accept":
        return None
    if setting == "tempfail":
        return Ruling(Action.TEMPFAIL, Category.ERROR, f"{check.value} error", REPLY_TEMPFAIL)
    return Ruling(Action.REJECT, Category.ERROR, f"{check.value} error", REPLY_UNCHECKED)


def size_plan(oversize: bool, policy: Policy) -> str:
    """What the size row leaves to check: "refuse" (nothing: oversize_action reject or
    tempfail), "envelope" (oversize accept: lists and authentication, not the content)
    or "all" (scan-head scans the head; a message within the limit is checked whole)."""
    if not oversize:
        return "all"
    if policy.oversize_action in ("reject", "tempfail"):
        return "refuse"
    return "envelope" if policy.oversize_action == "accept" else "all"


def _size_row(facts: Facts, _rcpt: str, trace: list[TraceStep]) -> Ruling | None:
    policy = facts.policy
    if not facts.found.oversize:
        return None
    trace.append(TraceStep("size", "oversize", policy.oversize_action))
    if size_plan(True, policy) != "refuse":
        return None
    if policy.oversize_action == "tempfail":
        return Ruling(Action.TEMPFAIL, Category.ERROR, "oversize", REPLY_TEMPFAIL)
    return Ruling(Action.REJECT, Category.ERROR, "oversize", REPLY_OVERSIZE)


def _antivirus_row(facts: Facts, _rcpt: str, trace: list[TraceStep]) -> Ruling | None:
    found = facts.found
    if found.scan_error is not None:
        return _failed(Check.ANTIVIRUS, facts.policy.on_scanner_error, found.scan_error, trace)
    if found.scan is None:
        trace.append(TraceStep("antivirus", "skipped"))
    elif not found.scan.scanned:
        trace.append(TraceStep("antivirus", "none", "no scanner configured"))
    else:
        trace.append(TraceStep("antivirus", found.scan.virus or "clean"))
        if found.scan.infected:
            return Ruling(facts.policy.virus_action, Category.VIRUS, f"virus {found.scan.virus}")
    return None


def _lists_row(facts: Facts, _rcpt: str, trace: list[TraceStep]) -> Ruling | None:
    if facts.found.store_error is None:
        return None
    return _failed(Check.LISTS, facts.policy.on_store_error, facts.found.store_error, trace)


def _classifier_row(facts: Facts, _rcpt: str, trace: list[TraceStep]) -> Ruling | None:
    if facts.found.model_error is not None:
        return _failed(Check.CLASSIFIER, facts.policy.on_model_error, facts.found.model_error, trace)
    score, threshold = facts.score, facts.threshold
    if score is not None and threshold is not None:
        trace.append(TraceStep("classifier", f"{score:.4f}", f"threshold {threshold:.4f}"))
    return None


def _auth_row(facts: Facts, _rcpt: str, trace: list[TraceStep]) -> Ruling | None:
    auth = facts.found.auth
    if auth is None:
        return None
    trace.append(TraceStep("auth", auth.source, auth.describe()))
    if auth.dns_failed and facts.policy.on_dns_error == "tempfail":
        return _failed(Check.AUTH, "tempfail", "DNS failed: " + auth.describe(), trace)
    if facts.dmarc_failed:
        trace.append(TraceStep("dmarc", "fail", f"p={facts.dmarc_failed} {auth.from_domain}"))
    return None


def _block_row(own: bool) -> RowCheck:
    """The recipient's own (``own``) or the global block list: any sender address, authenticated or not."""
    def check(facts: Facts, rcpt: str, steps: list[TraceStep]) -> Ruling | None:
        if facts.lists is None:
            return None
        hit = facts.lists.find(rcpt if own else None, BLOCK, facts.senders)
        if hit is None:
            return None
        steps.append(TraceStep("block", "rcpt" if facts.at_rcpt else "match", hit.describe()))
        return Ruling(Action.REJECT, Category.BLOCKED, "sender blocked")
    return check


def _allow_row(own: bool) -> RowCheck:
    """The recipient's own (``own``) or the global allow list: only for an authenticated
    sender (allowrule), never under a DMARC failure; a skipped entry leaves a step saying why.
    At RCPT time authentication is not known yet: an entry matching the envelope sender
    holds the decision over to end of message."""
    def check(facts: Facts, rcpt: str, steps: list[TraceStep]) -> Ruling | None:
        lists = facts.lists
        if lists is None:
            return None
        owner = rcpt if own else None
        if facts.at_rcpt:
            hit = lists.find(owner, ALLOW, facts.senders)
            if hit is None:
                return None
            steps.append(TraceStep("allow", "rcpt", hit.describe() + " (checked again at end of message)"))
            return Ruling(Action.ACCEPT, Category.ALLOWED, "sender allowed")
        hit, skip = authenticated_allow(lists, owner, facts.senders, facts.allowed, facts.found.auth)
        if skip is not None:
            steps.append(skip)
        if hit is None:
            return None
        if facts.dmarc_failed:
            steps.append(TraceStep("allow", "skipped", f"#{hit.entry.id} DMARC failed"))
            return None
        trusted = " (trusted without authentication)" if hit.entry.trust_unauthenticated else ""
        steps.append(TraceStep("allow", "match", hit.describe() + trusted))
        return Ruling(Action.ACCEPT, Category.ALLOWED, "sender allowed")
    return check


def _scored(probability: float, threshold: float, policy: Policy) -> tuple[Action, Category, str, TraceStep]:
    """A probability against a threshold: the action, category, reason and the step saying so."""
    p = f"{probability:.4f}"
    if probability >= policy.reject_threshold and probability >= threshold:
        return (policy.spam_action_high, Category.SPAM, "spam (high score)",
                TraceStep("score", "spam-high", f"{p}>={max(policy.reject_threshold, threshold):.4f}"))
    if probability >= threshold:
        return policy.spam_action, Category.SPAM, "spam", TraceStep("score", "spam", f"{p}>={threshold:.4f}")
    return Action.ACCEPT, Category.CLEAN, "clean", TraceStep("score", "clean", f"{p}<{threshold:.4f}")


def _dmarc_row(facts: Facts, rcpt: str, steps: list[TraceStep]) -> Ruling | None:
    p = facts.dmarc_failed
    if not p:
        return None
    action = facts.policy.dmarc_action
    score, (threshold, _own) = facts.score, facts.threshold_for(rcpt)
    if score is not None and threshold is not None:  # a worse score still counts
        scored, _, _, step = _scored(score, threshold, facts.policy)
        steps.append(step)
        action = scored if scored.severity > action.severity else action
    steps.append(TraceStep("dmarc", action.value, f"p={p}"))
    return Ruling(action, Category.SPAM, f"dmarc fail (p={p})")


def _score_row(facts: Facts, rcpt: str, steps: list[TraceStep]) -> Ruling:
    score, (threshold, own) = facts.score, facts.threshold_for(rcpt)
    if score is None or threshold is None:
        steps.append(TraceStep("score", "none", "not scored"))
        return Ruling(Action.ACCEPT, Category.CLEAN, "not scored")
    layer = facts.found.personal.get(rcpt.lower())
    if layer is not None:
        steps.append(TraceStep("personal", f"{layer.probability:.4f}", "the recipient's own feedback"))
        score = layer.probability
    if own is not None:
        steps.append(TraceStep("threshold", "own", f"{own:.4f}"))
    action, category, why, step = _scored(score, threshold, facts.policy)
    steps.append(step)
    return Ruling(action, category, why)


# The rules, first row that decides wins (docs/precedence.md explains each row;
# tests/unit/test_precedence_matrix.py checks every combination against the milter).
# MESSAGE rows come first: they decide for every recipient at once.  ``at_rcpt``
# rows are walked at RCPT time as well, with the envelope sender alone; the rows
# passed over there can only refuse at end of message (size, antivirus, a check
# failing), so a recipient refused at RCPT time is never one end of message delivers.
PRECEDENCE: tuple[Rule, ...] = (
    Rule("size", MESSAGE, _size_row, "over max_message_bytes: oversize_action reject/tempfail refuses "
         "the message unchecked; accept and scan-head carry on", (Category.ERROR,)),
    Rule("antivirus", MESSAGE, _antivirus_row, "a virus: virus_action, whatever any list says; "
         "clamd failing: on_scanner_error", (Category.VIRUS, Category.ERROR)),
    Rule("lists", MESSAGE, _lists_row, "the database failing: on_store_error", (Category.ERROR,)),
    Rule("classifier", MESSAGE, _classifier_row, "the model failing: on_model_error", (Category.ERROR,)),
    Rule("auth", MESSAGE, _auth_row, "DNS failing under on_dns_error = tempfail: tempfail",
         (Category.ERROR,)),
    Rule("recipient-block", RECIPIENT, _block_row(own=True), "the recipient's block list: reject",
         (Category.BLOCKED,), at_rcpt=True),
    Rule("recipient-allow", RECIPIENT, _allow_row(own=True), "the recipient's allow list: accept "
         "(authenticated sender, no DMARC failure)", (Category.ALLOWED,), at_rcpt=True),
    Rule("global-block", RECIPIENT, _block_row(own=False), "the global block list: reject",
         (Category.BLOCKED,), at_rcpt=True),
    Rule("global-allow", RECIPIENT, _allow_row(own=False), "the global allow list: accept "
         "(authenticated sender, no DMARC failure)", (Category.ALLOWED,), at_rcpt=True),
    Rule("dmarc", RECIPIENT, _dmarc_row, "DMARC failed under p=quarantine/reject: dmarc_action "
         "(the score's action if worse)", (Category.SPAM,)),
    Rule("score", RECIPIENT, _score_row, "the score against the recipient's own or the system threshold: "
         "spam_action_high / spam_action / accept", (Category.SPAM, Category.CLEAN)),
)
_RANK = {rule.name: index for index, rule in enumerate(PRECEDENCE)}
_AT_RCPT = tuple(rule for rule in PRECEDENCE if rule.at_rcpt)
_NO_POLICY, _NOTHING_YET = Policy(), Findings()  # RCPT time: the rows walked there read neither


def walk(rules: Sequence[Rule], facts: Facts, recipients: Sequence[str],
         trace: list[TraceStep]) -> tuple[list[RecipientDecision], Ruling | None]:
    """Walk ``rules`` in order: each recipient's decision is the first row that decides.

    The MESSAGE rows (first in the table) add their steps to ``trace``; one that
    decides decides for everyone, and is returned too (its reply, when it has one,
    refuses the whole message).  The other rows are walked for each recipient,
    with steps of their own.  Recipients no row decides for are left out.
    """
    first = next((i for i, rule in enumerate(rules) if rule.scope != MESSAGE), len(rules))
    for rule in rules[:first]:
        ruling = rule.check(facts, "", trace)
        if ruling is not None:
            own = tuple(trace) if ruling.reply is not None else ()  # a refusal: the steps that led to it
            return [_decision(rcpt, ruling, own, rule) for rcpt in recipients], ruling
    decisions: list[RecipientDecision] = []
    per_recipient = rules[first:]
    for rcpt in recipients:
        steps: list[TraceStep] = []
        for rule in per_recipient:
            ruled = rule.check(facts, rcpt, steps)
            if ruled is not None:
                decisions.append(_decision(rcpt, ruled, tuple(steps), rule))
                break
    return decisions, None


def _decision(rcpt: str, ruling: Ruling, steps: tuple[TraceStep, ...], rule: Rule) -> RecipientDecision:
    return RecipientDecision(rcpt, ruling.action, ruling.category, ruling.reason, steps, rule=rule.name)


def check_recipient(sender: str, recipient: str, lists: ListIndex) -> RecipientDecision | None:
    """RCPT time: the table walked with the envelope alone; a reject decision
    when a row that can be answered from it refuses the sender for this recipient."""
    senders = sender_addresses(sender, None)
    if not senders:
        return None
    facts = Facts(_NO_POLICY, lists, senders, senders, _NOTHING_YET, at_rcpt=True)
    decisions, _ = walk(_AT_RCPT, facts, (recipient,), [])
    if decisions and decisions[0].action is Action.REJECT:
        return decisions[0]
    return None


def _checks(found: Findings) -> tuple[CheckResult, ...]:
    """Each check that ran, and whether it failed (for the service's incident reports)."""
    out: list[CheckResult] = []
    if found.scan_error is not None or found.scan is not None:
        out.append(CheckResult(Check.ANTIVIRUS, found.scan_error))
    if found.store_error is not None or found.lists is not None:
        out.append(CheckResult(Check.LISTS, found.store_error))
    if found.model_error is not None or found.score is not None:
        out.append(CheckResult(Check.CLASSIFIER, found.model_error))
    if found.auth is not None:
        out.append(CheckResult(Check.AUTH, "DNS failed: " + found.auth.describe() if found.auth.dns_failed
                               else None))
    return tuple(out)


def decide(envelope: Envelope, msg: ParsedMessage, found: Findings, policy: Policy) -> Verdict:
    """Pure: walk ``PRECEDENCE`` for every recipient, then route the outcomes into a Verdict."""
    trace: list[TraceStep] = list(found.notes)
    senders = sender_addresses(envelope.sender, msg.header("from"))
    facts = Facts(policy, found.lists, senders, allow_candidates(found.lists, envelope.recipients, senders, msg),
                  found)
    decisions, message_ruling = walk(PRECEDENCE, facts, envelope.recipients, trace)
    checks = _checks(found)
    if message_ruling is not None and message_ruling.reply is not None:  # refused before any recipient row
        return Verdict(message_ruling.action, Category.ERROR, None, None, None, tuple(decisions), tuple(trace),
                       smtp_reply=message_ruling.reply, checks=checks)
    if message_ruling is not None:  # a virus: every recipient gets virus_action, then routing
        virus = found.scan.virus if found.scan is not None else None
        return route(decisions, trace, None, None, (f"virus:{virus}",), policy, virus=virus,
                     oversize=found.oversize, checks=checks)
    reasons = tuple(f"{c.token}:{c.spam_prob:.3f}" for c in found.score.clues) if found.score else ()
    return route(decisions, trace, facts.score, facts.threshold, reasons, policy, oversize=found.oversize,
                 auth=found.auth, checks=checks)


# -- routing: every recipient its own outcome, in one pass ---------------------

def _always(outcomes: frozenset[Action]) -> bool:
    return True


@dataclass(frozen=True)
class RouteRule:
    """One row of the routing table: a recipient's own outcome, what the other
    recipients' outcomes must be for the row to apply, and where the copy goes."""

    outcome: Action
    when: str
    applies: Callable[[frozenset[Action]], bool]
    route: Route
    why: str


# First matching row wins.  ``applies`` sees the set of every recipient's outcome.
# A message carries one set of headers, so a tagged and a clean copy cannot
# both be delivered: the clean copy wins and recipients who would have had it
# tagged get theirs in the quarantine (their Junk page); see docs/precedence.md.
ROUTES: tuple[RouteRule, ...] = (
    RouteRule(Action.REJECT, "every recipient rejects", lambda o: o == {Action.REJECT},
              Route.REFUSE, "refused at SMTP"),
    RouteRule(Action.REJECT, "another recipient takes it", _always,
              Route.DROP, "rejected for this recipient"),
    RouteRule(Action.QUARANTINE, "always", _always,
              Route.HOLD, "held in the quarantine"),
    RouteRule(Action.ACCEPT, "always", _always,
              Route.DELIVER, "delivered"),
    RouteRule(Action.TAG, "nobody takes it clean", lambda o: Action.ACCEPT not in o,
              Route.DELIVER_TAGGED, "delivered tagged"),
    RouteRule(Action.TAG, "another recipient takes it clean", lambda o: Action.ACCEPT in o,
              Route.HOLD, "held in the quarantine: the delivered copy is clean"),
)


def _routed(d: RecipientDecision, outcomes: frozenset[Action]) -> RecipientDecision:
    for rule in ROUTES:
        if rule.outcome is d.action and rule.applies(outcomes):
            action = Action.QUARANTINE if rule.route is Route.HOLD else d.action
            step = TraceStep("route", rule.route.value, rule.why)
            reason = d.reason if action is d.action else f"{d.reason}; {rule.why}"
            return RecipientDecision(d.recipient, action, d.category, reason, (*d.trace, step), rule.route,
                                     d.rule)
    raise ValueError(f"no routing rule for outcome {d.action.value}")  # a gap in ROUTES: a bug


def route(decisions: list[RecipientDecision], trace: list[TraceStep], score: float | None,
          threshold: float | None, reasons: tuple[str, ...], policy: Policy,
          virus: str | None = None, oversize: bool = False, auth: AuthResults | None = None,
          checks: tuple[CheckResult, ...] = ()) -> Verdict:
    """Route each recipient by ``ROUTES``, then give the message one SMTP answer.

    For the message, first match wins:

    1. every recipient is refused -> reject at SMTP;
    2. someone's copy must be held but the filter saw only the head of the
       message (oversize) -> reject 552: an incomplete copy must not be stored;
    3. someone receives the tagged copy -> TAG; someone the clean copy -> ACCEPT;
    4. nobody receives it (held and dropped) -> QUARANTINE: accepted, then
       discarded once the held copies are stored.
    """
    outcomes = frozenset(d.action for d in decisions)
    routed = tuple(_routed(d, outcomes) for d in decisions)
    category = _message_category(routed)
    if routed and all(d.route is Route.REFUSE for d in routed):
        return Verdict(Action.REJECT, category, score, threshold, virus, routed, tuple(trace),
                       reasons, smtp_reply=_reject_reply(routed, virus), auth=auth, checks=checks)
    if oversize and any(d.route is Route.HOLD for d in routed):
        trace = [*trace, TraceStep("quarantine", "refused", "only the head was read")]
        refused = tuple(replace(d, action=Action.REJECT, route=Route.REFUSE) for d in routed)
        return Verdict(Action.REJECT, category, score, threshold, virus, refused, tuple(trace),
                       reasons, smtp_reply=REPLY_OVERSIZE, auth=auth, checks=checks)
    delivered = [d for d in routed if d.route.delivered]
    tagged = any(d.route is Route.DELIVER_TAGGED for d in delivered)
    if tagged:
        action = Action.TAG
    elif delivered:
        action = Action.ACCEPT
    else:
        action = Action.QUARANTINE
    headers = _headers(tagged, score, threshold, action, trace + _recipient_steps(delivered), reasons)
    prefix = policy.subject_prefix if tagged else ""
    return Verdict(action, category, score, threshold, virus, routed, tuple(trace), reasons,
                   headers=headers if delivered else (), subject_prefix=prefix, auth=auth, checks=checks)


def _reject_reply(decisions: tuple[RecipientDecision, ...], virus: str | None) -> tuple[str, str, str]:
    if virus is not None:
        return REPLY_VIRUS[0], REPLY_VIRUS[1], REPLY_VIRUS[2].format(name=virus)
    if all(d.category is Category.BLOCKED for d in decisions):
        return REPLY_BLOCKED
    return REPLY_SPAM


def hold_failed(verdict: Verdict, detail: str) -> Verdict:
    """The verdict when the held copies could not be stored: tempfail the whole
    message, so the sender retries and nothing is lost (whatever on_store_error says)."""
    step = TraceStep("quarantine", "error", detail[:200])
    decisions = tuple(replace(d, action=Action.TEMPFAIL, reason=f"{d.reason}; quarantine unavailable",
                              route=Route.REFUSE) for d in verdict.decisions)
    return replace(verdict, action=Action.TEMPFAIL, decisions=decisions, trace=(*verdict.trace, step),
                   smtp_reply=REPLY_TEMPFAIL, headers=(), subject_prefix="")


def _message_category(decisions: tuple[RecipientDecision, ...]) -> Category:
    """The category of the decision made by the earliest row of ``PRECEDENCE``
    (within a row, its most telling category); CLEAN when there is none."""
    if not decisions:
        return Category.CLEAN
    return min(decisions, key=_precedence).category


_BY_HAND = tuple(dict.fromkeys(c for rule in PRECEDENCE for c in rule.categories))  # the table's order


def _precedence(d: RecipientDecision) -> tuple[int, int]:
    """Where a decision stands in the table: its row, then its category within the row
    (decisions built by hand, without a row, come last, in the table's order of categories)."""
    index = _RANK.get(d.rule, len(PRECEDENCE))
    categories = PRECEDENCE[index].categories if index < len(PRECEDENCE) else _BY_HAND
    return index, categories.index(d.category) if d.category in categories else len(categories)


def _recipient_steps(delivered: list[RecipientDecision]) -> list[TraceStep]:
    """What the delivered copy's header may say about its recipients: one
    recipient's own steps, or for several only how many (their addresses and
    lists are private).  Recipients who do not receive this copy are never named."""
    if len(delivered) == 1:
        d = delivered[0]
        return [*d.trace, TraceStep("decision", d.action.value, d.reason)]
    return [TraceStep("recipients", str(len(delivered)))]


def _headers(tagged: bool, score: float | None, threshold: float | None, action: Action,
             trace: list[TraceStep], reasons: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """X-Spam-* for the delivered copy (describing only its recipients)."""
    parts = [("Yes" if tagged else "No")]
    if score is not None:
        parts.append(f"score={score:.4f}")
    if threshold is not None:
        parts.append(f"threshold={threshold:.4f}")
    parts.append(f"action={action.value}")
    parts.append("trace=" + ";".join(str(s).replace(" ", "_") for s in trace)[:500])
    if reasons:
        parts.append("reasons=" + ",".join(r.replace(" ", "_") for r in reasons)[:300])
    out = [("X-Spam-Flag", "YES" if tagged else "NO"), ("X-Spam-Status", " ".join(parts))]
    if score is not None:
        out.insert(1, ("X-Spam-Score", f"{score:.4f}"))
    return tuple(out)


# -- the impure half: calling the checks -------------------------------------

ModelSource = Callable[[], Model]
ListSource = Callable[[], ListIndex]
LayerSource = Callable[[], "Mapping[str, Layer]"]


def gather(msg: ParsedMessage, stream: Stream | None, scanner: Scanner | None,
           model: ModelSource, lists: ListSource, *, tokens: Collection[str], oversize: bool = False,
           skip_content_checks: bool = False,
           envelope: Envelope | None = None, authenticator: Authenticator | None = None,
           layers: LayerSource | None = None,
           timings: dict[str, float] | None = None) -> Findings:
    """Run the checks through their interfaces; typed errors become findings.

    ``tokens`` are the message's features (``tokens.features``), computed once by
    the caller, which also keeps them for the message log.
    ``timings``, when given, gets the seconds each check took (clamd, lists,
    classifier, auth) added to what it holds.
    The sender is authenticated (DNS) only when that can change the outcome:
    an allow entry would match, or the authenticator checks all mail.
    """
    clock = perf_counter()
    t = timings if timings is not None else {}
    scan = scan_error = None
    if scanner is not None and stream is not None and not skip_content_checks:
        try:
            scan = scanner.scan(stream)
        except ScannerError as exc:
            scan_error = str(exc)
        clock = _lap(t, "clamd", clock)
    index = store_error = None
    try:
        index = lists()
    except StoreError as exc:
        store_error = str(exc)
    clock = _lap(t, "lists", clock)
    score = threshold = model_error = None
    personal: dict[str, Score] = {}
    if not skip_content_checks and not (scan is not None and scan.infected):
        try:
            current = model()
            score = current.score(tokens)
            threshold = current.spam_threshold
            if layers is not None and envelope is not None:
                personal = _personal_scores(current, tokens, envelope.recipients, layers)
        except ModelError as exc:
            model_error = str(exc)
        clock = _lap(t, "classifier", clock)
    auth = None
    if authenticator is not None and envelope is not None and index is not None and (
            authenticator.every_message or allow_may_apply(index, envelope.sender, envelope.recipients, msg)):
        auth = authenticator.check(envelope.sender, envelope.client_ip, envelope.helo, msg.headers,
                                   lambda: _whole(stream))
        _lap(t, "auth", clock)
    return Findings(scan=scan, scan_error=scan_error, score=score, model_threshold=threshold,
                    model_error=model_error, lists=index, store_error=store_error,
                    oversize=oversize, auth=auth, personal=personal)


def _personal_scores(model: Model, tokens: Collection[str], recipients: Sequence[str],
                     layers: LayerSource) -> dict[str, Score]:
    """Scores with each recipient's personal layer (only recipients that have one)."""
    try:
        found = layers()
    except StoreError as exc:  # the shared score still stands; personal layers come back with the store
        log.warning("personal layers unavailable: %s", exc)
        return {}
    if not found:
        return {}
    out: dict[str, Score] = {}
    listed: list[str] | None = None
    for rcpt in recipients:
        layer = found.get(rcpt.lower())
        if layer is not None:
            listed = listed or list(tokens)
            out[rcpt.lower()] = model.score(listed, layer=layer)
    return out


def _lap(timings: dict[str, float], stage: str, since: float) -> float:
    """Add the seconds since ``since`` to ``timings[stage]``; returns now."""
    now = perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - since
    return now


def _whole(stream: Stream | None) -> bytes:
    """The message as it arrived (for DKIM); the stream is left at its start."""
    if stream is None:
        return b""
    stream.seek(0)
    data = stream.read()
    stream.seek(0)
    return data


def evaluate(envelope: Envelope, msg: ParsedMessage, stream: Stream | None,
             scanner: Scanner | None, model: ModelSource, lists: ListSource,
             policy: Policy, *, tokens: Collection[str], oversize: bool = False,
             authenticator: Authenticator | None = None, layers: LayerSource | None = None,
             timings: dict[str, float] | None = None) -> Verdict:
    """gather() then decide(): the one call the milter and ``stronghold scan`` share.

    Only the checks the table can still use are run: none when the size row
    refuses the message, no content checks when it lets an oversize one through.
    """
    plan = size_plan(oversize, policy)
    if plan == "refuse":
        found = Findings(oversize=oversize)
    else:
        found = gather(msg, stream, scanner, model, lists, tokens=tokens, oversize=oversize,
                       skip_content_checks=plan == "envelope", envelope=envelope, authenticator=authenticator,
                       layers=layers, timings=timings)
    return decide(envelope, msg, found, policy)
