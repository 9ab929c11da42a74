"""The precedence table: what the checks found -> each recipient's decision, with a trace.

``PRECEDENCE`` below is the single statement of the rules: an ordered table
of named rows, and for each recipient the first row that decides wins.  The
rows that concern the whole message (size, antivirus, the check failures)
come first and decide for every recipient at once; the rest are walked per
recipient.  Every path walks the same table: end of message (``decide``,
which the milter and ``stronghold scan`` reach through ``engine.evaluate``)
with everything the checks found, and RCPT time (``check_recipient``) with the
envelope alone, passing over the rows that need the message.  Each row that
looks at something appends a ``TraceStep``; the message's category is the
category of the decision made by the earliest row.  docs/precedence.md
explains the rows.  ``decide`` is pure, and hands the outcomes to
``routing.route``; a failed check's typed error arrives here as a finding
that the table maps to the configured policy (tempfail by default: a crashed
check is never "nothing found").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stronghold.allowrule import allow_candidates, authenticated_allow
from stronghold.findings import Findings, checks_run
from stronghold.lists import ALLOW, BLOCK, ListIndex, sender_addresses
from stronghold.message import ParsedMessage
from stronghold.policy import REPLY_OVERSIZE, REPLY_TEMPFAIL, REPLY_UNCHECKED, Policy
from stronghold.routing import route
from stronghold.verdict import (
    Action,
    Category,
    Check,
    Envelope,
    RecipientDecision,
    TraceStep,
    Verdict,
)


@dataclass(frozen=True, init=False)
class Facts:
    """What one walk of the table knows: everything the checks found at end of
    message; at RCPT time the envelope sender and the lists alone."""

    policy: Policy
    lists: ListIndex | None
    senders: list[tuple[str, str]]  # the envelope sender, and at end of message the header From
    allowed: list[tuple[str, str]]  # those an allow entry may match (allowrule.allow_senders)
    found: Findings = field(default_factory=Findings)
    at_rcpt: bool = False

    def __init__(self, policy: Policy, lists: ListIndex | None, senders: list[tuple[str, str]],
                 allowed: list[tuple[str, str]], found: Findings | None = None, at_rcpt: bool = False) -> None:
        values = self.__dict__  # frozen: filled at once (as verdict.TraceStep, whose module says why)
        values["policy"] = policy
        values["lists"] = lists
        values["senders"] = senders
        values["allowed"] = allowed
        values["found"] = Findings() if found is None else found
        values["at_rcpt"] = at_rcpt

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


@dataclass(frozen=True, init=False)
class Ruling:
    """What a row decided; ``reply`` when it refuses the whole message at once."""

    action: Action
    category: Category
    reason: str
    reply: tuple[str, str, str] | None = None

    def __init__(self, action: Action, category: Category, reason: str,
                 reply: tuple[str, str, str] | None = None) -> None:
        values = self.__dict__  # frozen: filled at once (as verdict.TraceStep, whose module says why)
        values["action"] = action
        values["category"] = category
        values["reason"] = reason
        values["reply"] = reply


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
        if facts.at_rcpt and not own and facts.lists.has(rcpt, ALLOW):
            return None  # their allow list may match the header From, unseen yet: end of message decides
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
    first = len(rules)
    for index, rule in enumerate(rules):
        if rule.scope != MESSAGE:
            first = index
            break
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
    if not (lists.has(recipient, BLOCK) or lists.has(None, BLOCK)):
        return None  # only a block row refuses, and neither list has an entry
    senders = sender_addresses(sender, None)
    if not senders:
        return None
    facts = Facts(_NO_POLICY, lists, senders, senders, _NOTHING_YET, at_rcpt=True)
    decisions, _ = walk(_AT_RCPT, facts, (recipient,), [])
    if decisions and decisions[0].action is Action.REJECT:
        return decisions[0]
    return None


def decide(envelope: Envelope, msg: ParsedMessage, found: Findings, policy: Policy) -> Verdict:
    """Pure: walk ``PRECEDENCE`` for every recipient, then route the outcomes into a Verdict."""
    trace: list[TraceStep] = list(found.notes)
    senders = sender_addresses(envelope.sender, msg.header("from"))
    facts = Facts(policy, found.lists, senders, allow_candidates(found.lists, envelope.recipients, senders, msg),
                  found)
    decisions, message_ruling = walk(PRECEDENCE, facts, envelope.recipients, trace)
    checks = checks_run(found)
    if message_ruling is not None and message_ruling.reply is not None:  # refused before any recipient row
        return Verdict(message_ruling.action, Category.ERROR, None, None, None, tuple(decisions), tuple(trace),
                       smtp_reply=message_ruling.reply, checks=checks)
    if message_ruling is not None:  # a virus: every recipient gets virus_action, then routing
        virus = found.scan.virus if found.scan is not None else None
        return route(decisions, trace, None, None, (f"virus:{virus}",), policy, virus=virus,
                     oversize=found.oversize, checks=checks, category=_message_category(decisions))
    reasons = tuple([f"{c.token}:{c.spam_prob:.3f}" for c in found.score.clues]) if found.score else ()
    return route(decisions, trace, facts.score, facts.threshold, reasons, policy, oversize=found.oversize,
                 auth=found.auth, checks=checks, category=_message_category(decisions))


def _message_category(decisions: Sequence[RecipientDecision]) -> Category:
    """The category of the decision made by the earliest row of ``PRECEDENCE``
    (within a row, its most telling category); CLEAN when there is none."""
    if not decisions:
        return Category.CLEAN
    if len(decisions) == 1:
        return decisions[0].category
    return min(decisions, key=_precedence).category


_BY_HAND = tuple(dict.fromkeys(c for rule in PRECEDENCE for c in rule.categories))  # the table's order


def _precedence(d: RecipientDecision) -> tuple[int, int]:
    """Where a decision stands in the table: its row, then its category within the row
    (decisions built by hand, without a row, come last, in the table's order of categories)."""
    index = _RANK.get(d.rule, len(PRECEDENCE))
    categories = PRECEDENCE[index].categories if index < len(PRECEDENCE) else _BY_HAND
    return index, categories.index(d.category) if d.category in categories else len(categories)
