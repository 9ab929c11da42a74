"""The scoring core: envelope + message -> Verdict, with a trace.

Precedence, per recipient (first match wins; see docs/precedence.md):

1. a virus                        -> virus_action, whatever any list says
2. the recipient's block list     -> reject
3. the recipient's allow list     -> accept, no spam action (authenticated senders only)
4. the global block list          -> reject
5. the global allow list          -> accept, no spam action (authenticated senders only)
6. the classifier's score         -> spam_action_high / spam_action / accept

An allow entry applies only when the address it matched is authenticated
(``authres``): the single header From aligned with a passing DKIM d= or SPF
domain, or the envelope sender with SPF pass; otherwise, unless its owner
marked it "trust without authentication", it is skipped with a trace step
saying why.  A DMARC failure under the From domain's p=quarantine/reject gets
``dmarc_action`` after the recipient's own block and before allow entries.

Each recipient keeps their own outcome: ``ROUTES`` (a table, first match
wins) sends each copy to the delivered copy, the quarantine, or away
(``delrcpt``), and the message is refused at SMTP only when every recipient
refuses it.  ``decide`` is pure; ``evaluate`` calls the scanner, the model and
the lists through the small interfaces passed in and maps their typed errors
to the configured policy (tempfail by default: a crashed check is never
"nothing found").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import TYPE_CHECKING

from stronghold.allowrule import allow_candidates, allow_may_apply, authenticated_allow
from stronghold.antivirus import Scanner, ScannerError, ScanResult
from stronghold.authres import Authenticator, AuthResults
from stronghold.classifier import Model, ModelError, Score
from stronghold.config import Config
from stronghold.lists import ALLOW, BLOCK, ListIndex, Match, sender_addresses
from stronghold.message import ParsedMessage
from stronghold.spool import Stream
from stronghold.store.errors import StoreError
from stronghold.tokens import features
from stronghold.verdict import Action, Category, Envelope, RecipientDecision, Route, TraceStep, Verdict

if TYPE_CHECKING:
    from stronghold.personal import Layer

log = logging.getLogger(__name__)

REPLY_VIRUS = ("554", "5.7.0", "Message contains a virus: {name}")
REPLY_SPAM = ("550", "5.7.1", "Message rejected as spam")
REPLY_BLOCKED = ("550", "5.7.1", "Sender is blocked by the recipient")
REPLY_TEMPFAIL = ("451", "4.7.1", "Temporary filtering failure, please try again later")
REPLY_OVERSIZE = ("552", "5.3.4", "Message too big for the filter")


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


def check_recipient(sender: str, recipient: str, lists: ListIndex) -> RecipientDecision | None:
    """RCPT-time check: a reject decision if the envelope sender is blocked for this recipient.

    Follows the same precedence as ``decide``: the recipient's own allow list
    overrides the global block list.
    """
    senders = sender_addresses(sender, None)
    if not senders:
        return None
    hit = lists.find(recipient, BLOCK, senders)
    if hit is None and lists.find(recipient, ALLOW, senders) is None:
        hit = lists.find(None, BLOCK, senders)
    if hit is None:
        return None
    step = TraceStep("block", "rcpt", hit.describe())
    return RecipientDecision(recipient, Action.REJECT, Category.BLOCKED, "sender blocked", (step,))


def _list_step(recipient: str, lists: ListIndex, senders: list[tuple[str, str]],
               allowed: list[tuple[str, str]], auth: AuthResults | None,
               steps: list[TraceStep]) -> tuple[Match | None, str | None]:
    """The first list entry that applies; skipped allow entries add a step to ``steps``."""
    for owner, kind in ((recipient, BLOCK), (recipient, ALLOW), (None, BLOCK), (None, ALLOW)):
        if kind == BLOCK:
            hit = lists.find(owner, kind, senders)
        else:
            hit, skip = authenticated_allow(lists, owner, senders, allowed, auth)
            if skip is not None:
                steps.append(skip)
        if hit is not None:
            return hit, kind
    return None, None


def _score_action(score: float, threshold: float, policy: Policy) -> tuple[Action, Category, str]:
    if score >= policy.reject_threshold and score >= threshold:
        return policy.spam_action_high, Category.SPAM, "spam (high score)"
    if score >= threshold:
        return policy.spam_action, Category.SPAM, "spam"
    return Action.ACCEPT, Category.CLEAN, "clean"


def _failure(kind: str, policy_value: str, detail: str, envelope: Envelope,
             trace: list[TraceStep]) -> Verdict | None:
    """A Verdict for a failed check unless the admin chose to carry on."""
    trace.append(TraceStep(kind, "error", detail[:200]))
    if policy_value == "accept":
        return None
    action = Action.TEMPFAIL if policy_value == "tempfail" else Action.REJECT
    reply = REPLY_TEMPFAIL if action is Action.TEMPFAIL else (
        "550", "5.7.1", "Message could not be checked")
    decisions = tuple(RecipientDecision(r, action, Category.ERROR, f"{kind} error", tuple(trace))
                      for r in envelope.recipients)
    return Verdict(action, Category.ERROR, None, None, None, decisions, tuple(trace),
                   smtp_reply=reply)


def decide(envelope: Envelope, msg: ParsedMessage, found: Findings, policy: Policy) -> Verdict:
    """Pure precedence table: findings -> each recipient's outcome -> routed Verdict."""
    trace: list[TraceStep] = list(found.notes)
    if found.oversize:
        trace.append(TraceStep("size", "oversize", policy.oversize_action))
    # 1. antivirus (before any list: a virus is never let through)
    virus: str | None = None
    if found.scan_error is not None:
        failed = _failure("antivirus", policy.on_scanner_error, found.scan_error, envelope, trace)
        if failed:
            return failed
    elif found.scan is not None and not found.scan.scanned:
        trace.append(TraceStep("antivirus", "none", "no scanner configured"))
    elif found.scan is not None:
        trace.append(TraceStep("antivirus", found.scan.virus or "clean"))
        if found.scan.infected:
            virus = found.scan.virus
    else:
        trace.append(TraceStep("antivirus", "skipped"))
    if virus is not None:
        infected = [RecipientDecision(r, policy.virus_action, Category.VIRUS, f"virus {virus}")
                    for r in envelope.recipients]
        return route(infected, trace, None, None, (f"virus:{virus}",), policy, virus=virus,
                     oversize=found.oversize)
    # lists
    lists = found.lists
    if found.store_error is not None:
        failed = _failure("lists", policy.on_store_error, found.store_error, envelope, trace)
        if failed:
            return failed
    # classifier
    score = found.score.probability if found.score is not None else None
    threshold = policy.spam_threshold if policy.spam_threshold is not None else found.model_threshold
    reasons = tuple(f"{c.token}:{c.spam_prob:.3f}" for c in found.score.clues) if found.score else ()
    if found.model_error is not None:
        failed = _failure("classifier", policy.on_model_error, found.model_error, envelope, trace)
        if failed:
            return failed
    elif score is not None and threshold is not None:
        trace.append(TraceStep("classifier", f"{score:.4f}", f"threshold {threshold:.4f}"))
    auth = found.auth
    if auth is not None:
        trace.append(TraceStep("auth", auth.source, auth.describe()))
        if auth.dns_failed and policy.on_dns_error == "tempfail":
            failed = _failure("auth", "tempfail", "DNS failed: " + auth.describe(), envelope, trace)
            if failed:
                return failed
    dmarc_policy = auth.dmarc_failed_policy() if auth is not None else ""
    if dmarc_policy:
        trace.append(TraceStep("dmarc", "fail", f"p={dmarc_policy} {auth.from_domain if auth else ''}"))
    senders = sender_addresses(envelope.sender, msg.header("from"))
    allowed = allow_candidates(lists, envelope.recipients, senders, msg)
    decisions: list[RecipientDecision] = []
    for rcpt in envelope.recipients:
        steps: list[TraceStep] = []
        hit: Match | None = None
        kind: str | None = None
        own = lists.threshold_for(rcpt) if lists is not None and threshold is not None else None
        rcpt_threshold = own if own is not None else threshold
        if lists is not None:
            hit, kind = _list_step(rcpt, lists, senders, allowed, auth, steps)
            if dmarc_policy and hit is not None and kind == ALLOW:  # blocks still apply; allow entries do not
                steps.append(TraceStep("allow", "skipped", f"#{hit.entry.id} DMARC failed"))
                hit = lists.find(None, BLOCK, senders)
                kind = BLOCK if hit is not None else None
        if hit is not None and kind == BLOCK:
            steps.append(TraceStep("block", "match", hit.describe()))
            decisions.append(RecipientDecision(rcpt, Action.REJECT, Category.BLOCKED,
                                               "sender blocked", tuple(steps)))
        elif dmarc_policy:
            action = policy.dmarc_action
            if score is not None and rcpt_threshold is not None:
                scored = _score_action(score, rcpt_threshold, policy)[0]
                action = scored if scored.severity > action.severity else action
            decisions.append(RecipientDecision(rcpt, action, Category.SPAM, f"dmarc fail (p={dmarc_policy})",
                                               tuple(steps)))
        elif hit is not None and kind == ALLOW:
            trusted = " (trusted without authentication)" if hit.entry.trust_unauthenticated else ""
            steps.append(TraceStep("allow", "match", hit.describe() + trusted))
            decisions.append(RecipientDecision(rcpt, Action.ACCEPT, Category.ALLOWED,
                                               "sender allowed", tuple(steps)))
        elif score is not None and rcpt_threshold is not None:
            layer = found.personal.get(rcpt.lower())
            if layer is not None:
                steps.append(TraceStep("personal", f"{layer.probability:.4f}", "the recipient's own feedback"))
            if own is not None:
                steps.append(TraceStep("threshold", "own", f"{own:.4f}"))
            action, category, why = _score_action(layer.probability if layer else score, rcpt_threshold, policy)
            decisions.append(RecipientDecision(rcpt, action, category, why, tuple(steps)))
        else:
            decisions.append(RecipientDecision(rcpt, Action.ACCEPT, Category.CLEAN,
                                               "not scored", tuple(steps)))
    return replace(route(decisions, trace, score, threshold, reasons, policy, oversize=found.oversize),
                   auth=auth)


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
            return RecipientDecision(d.recipient, action, d.category, reason, (*d.trace, step),
                                     rule.route)
    raise ValueError(f"no routing rule for outcome {d.action.value}")  # a gap in ROUTES: a bug


def route(decisions: list[RecipientDecision], trace: list[TraceStep], score: float | None,
          threshold: float | None, reasons: tuple[str, ...], policy: Policy,
          virus: str | None = None, oversize: bool = False) -> Verdict:
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
                       reasons, smtp_reply=_reject_reply(routed, virus))
    if oversize and any(d.route is Route.HOLD for d in routed):
        trace = [*trace, TraceStep("quarantine", "refused", "only the head was read")]
        refused = tuple(replace(d, action=Action.REJECT, route=Route.REFUSE) for d in routed)
        return Verdict(Action.REJECT, category, score, threshold, virus, refused, tuple(trace),
                       reasons, smtp_reply=REPLY_OVERSIZE)
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
                   headers=headers if delivered else (), subject_prefix=prefix)


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
    order = (Category.VIRUS, Category.ERROR, Category.SPAM, Category.BLOCKED, Category.ALLOWED)
    present = {d.category for d in decisions}
    for cat in order:
        if cat in present:
            return cat
    return Category.CLEAN


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
           model: ModelSource, lists: ListSource, oversize: bool = False,
           skip_content_checks: bool = False, tokens: set[str] | None = None,
           envelope: Envelope | None = None, authenticator: Authenticator | None = None,
           layers: LayerSource | None = None,
           timings: dict[str, float] | None = None) -> Findings:
    """Run the checks through their interfaces; typed errors become findings.

    ``tokens`` are the message's features when the caller has them already.
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
            toks = tokens if tokens is not None else features(msg)
            score = current.score(toks)
            threshold = current.spam_threshold
            if layers is not None and envelope is not None:
                personal = _personal_scores(current, toks, envelope.recipients, layers)
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


def _personal_scores(model: Model, tokens: set[str], recipients: Sequence[str],
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
             policy: Policy, oversize: bool = False, tokens: set[str] | None = None,
             authenticator: Authenticator | None = None, layers: LayerSource | None = None,
             timings: dict[str, float] | None = None) -> Verdict:
    """gather() then decide(): the one call the milter, CLI and web UI share."""
    skip = oversize and policy.oversize_action == "accept"
    if oversize and policy.oversize_action in ("tempfail", "reject"):
        action = Action.TEMPFAIL if policy.oversize_action == "tempfail" else Action.REJECT
        trace = (TraceStep("size", "oversize", policy.oversize_action),)
        reply = REPLY_TEMPFAIL if action is Action.TEMPFAIL else REPLY_OVERSIZE
        decisions = tuple(RecipientDecision(r, action, Category.ERROR, "oversize", trace)
                          for r in envelope.recipients)
        return Verdict(action, Category.ERROR, None, None, None, decisions, trace,
                       smtp_reply=reply)
    found = gather(msg, stream, scanner, model, lists, oversize, skip_content_checks=skip, tokens=tokens,
                   envelope=envelope, authenticator=authenticator, layers=layers,
                   timings=timings)
    return decide(envelope, msg, found, policy)
