"""The routing table: every recipient's outcome -> where their copy goes, in one pass.

``ROUTES`` (first match wins) sends each recipient's copy to the delivered
copy, the quarantine, or away (``delrcpt``); the message is refused at SMTP
only when every recipient refuses it.  ``route`` also gives the delivered copy
its ``X-Spam-*`` headers.  The message's category is the caller's (the
precedence table knows the order of its rows): this module never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from stronghold.authres import AuthResults
from stronghold.policy import REPLY_BLOCKED, REPLY_OVERSIZE, REPLY_SPAM, REPLY_TEMPFAIL, REPLY_VIRUS, Policy
from stronghold.verdict import Action, Category, CheckResult, RecipientDecision, Route, TraceStep, Verdict


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


# Each row with the trace step it adds (built once: a step is a value, shared by every decision it routes).
_ROUTE_STEPS = tuple((rule, TraceStep("route", rule.route.value, rule.why)) for rule in ROUTES)


def _routed(d: RecipientDecision, outcomes: frozenset[Action]) -> RecipientDecision:
    for rule, step in _ROUTE_STEPS:
        if rule.outcome is d.action and rule.applies(outcomes):
            action = Action.QUARANTINE if rule.route is Route.HOLD else d.action
            reason = d.reason if action is d.action else f"{d.reason}; {rule.why}"
            return RecipientDecision(d.recipient, action, d.category, reason, (*d.trace, step), rule.route,
                                     d.rule)
    raise ValueError(f"no routing rule for outcome {d.action.value}")  # a gap in ROUTES: a bug


def route(decisions: list[RecipientDecision], trace: list[TraceStep], score: float | None,
          threshold: float | None, reasons: tuple[str, ...], policy: Policy,
          virus: str | None = None, oversize: bool = False, auth: AuthResults | None = None,
          checks: tuple[CheckResult, ...] = (), *, category: Category) -> Verdict:
    """Route each recipient by ``ROUTES``, then give the message one SMTP answer.

    ``category`` is the message's (routing changes no decision's category).

    For the message, first match wins:

    1. every recipient is refused -> reject at SMTP;
    2. someone's copy must be held but the filter saw only the head of the
       message (oversize) -> reject 552: an incomplete copy must not be stored;
    3. someone receives the tagged copy -> TAG; someone the clean copy -> ACCEPT;
    4. nobody receives it (held and dropped) -> QUARANTINE: accepted, then
       discarded once the held copies are stored.
    """
    outcomes = frozenset(d.action for d in decisions)
    routed = tuple([_routed(d, outcomes) for d in decisions])
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
    parts.append("trace=" + ";".join([str(s).replace(" ", "_") for s in trace])[:500])
    if reasons:
        parts.append("reasons=" + ",".join([r.replace(" ", "_") for r in reasons])[:300])
    out = [("X-Spam-Flag", "YES" if tagged else "NO"), ("X-Spam-Status", " ".join(parts))]
    if score is not None:
        out.insert(1, ("X-Spam-Score", f"{score:.4f}"))
    return tuple(out)
