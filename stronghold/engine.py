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

Recipients can disagree after DATA; the message-level rule in ``combine``
never rejects a recipient who wants the message and never drops one without a
log entry.  ``decide`` is pure; ``evaluate`` calls the scanner, the model and
the lists through the small interfaces passed in and maps their typed errors
to the configured policy (tempfail by default: a crashed check is never
"nothing found").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

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
from stronghold.verdict import Action, Category, RecipientDecision, TraceStep, Verdict

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
    spam_action_high: Action = Action.REJECT
    virus_action: Action = Action.REJECT
    subject_prefix: str = "[SPAM]"
    on_scanner_error: str = "tempfail"
    on_model_error: str = "tempfail"
    on_store_error: str = "tempfail"
    oversize_action: str = "scan-head"
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
class Envelope:
    sender: str
    recipients: tuple[str, ...]
    client_ip: str = ""
    helo: str = ""
    queue_id: str = ""


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
    """Pure precedence table: findings -> Verdict."""
    trace: list[TraceStep] = list(found.notes)
    if found.oversize:
        trace.append(TraceStep("size", "oversize", policy.oversize_action))
    # 1. antivirus (before any list: a virus is never let through)
    if found.scan_error is not None:
        failed = _failure("antivirus", policy.on_scanner_error, found.scan_error, envelope, trace)
        if failed:
            return failed
    elif found.scan is not None:
        trace.append(TraceStep("antivirus", found.scan.virus or "clean"))
        if found.scan.infected:
            reply = (REPLY_VIRUS[0], REPLY_VIRUS[1], REPLY_VIRUS[2].format(name=found.scan.virus))
            refused = tuple(RecipientDecision(r, policy.virus_action, Category.VIRUS,
                                              f"virus {found.scan.virus}")
                            for r in envelope.recipients)
            return Verdict(policy.virus_action, Category.VIRUS, None, None, found.scan.virus,
                           refused, tuple(trace), reasons=(f"virus:{found.scan.virus}",),
                           smtp_reply=reply if policy.virus_action is Action.REJECT else None)
    else:
        trace.append(TraceStep("antivirus", "skipped"))
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
            if score is not None and threshold is not None:
                scored = _score_action(score, threshold, policy)[0]
                action = scored if scored.severity > action.severity else action
            decisions.append(RecipientDecision(rcpt, action, Category.SPAM, f"dmarc fail (p={dmarc_policy})",
                                               tuple(steps)))
        elif hit is not None and kind == ALLOW:
            trusted = " (trusted without authentication)" if hit.entry.trust_unauthenticated else ""
            steps.append(TraceStep("allow", "match", hit.describe() + trusted))
            decisions.append(RecipientDecision(rcpt, Action.ACCEPT, Category.ALLOWED,
                                               "sender allowed", tuple(steps)))
        elif score is not None and threshold is not None:
            action, category, why = _score_action(score, threshold, policy)
            decisions.append(RecipientDecision(rcpt, action, category, why, tuple(steps)))
        else:
            decisions.append(RecipientDecision(rcpt, Action.ACCEPT, Category.CLEAN,
                                               "not scored", tuple(steps)))
    return replace(combine(envelope, decisions, trace, score, threshold, reasons, policy), auth=auth)


def combine(envelope: Envelope, decisions: list[RecipientDecision], trace: list[TraceStep],
            score: float | None, threshold: float | None, reasons: tuple[str, ...],
            policy: Policy) -> Verdict:
    """One action for the message from per-recipient decisions.

    - everyone rejects: the message is rejected (550);
    - otherwise nobody who wants the message loses it: recipients who blocked
      the sender (by header From) are removed and logged as blocked; a spam
      reject or quarantine for some recipients is lowered to a tag for them;
    - everyone left quarantines: the message is held;
    - anyone left tags: the (single) delivered copy is tagged.
    """
    category = _message_category(decisions)
    if decisions and all(d.action is Action.REJECT for d in decisions):
        reply = REPLY_BLOCKED if all(d.category is Category.BLOCKED for d in decisions) else REPLY_SPAM
        return Verdict(Action.REJECT, category, score, threshold, None, tuple(decisions),
                       tuple(trace), reasons, smtp_reply=reply)
    dropped = tuple(d.recipient for d in decisions
                    if d.action is Action.REJECT and d.category is Category.BLOCKED)
    kept = [d for d in decisions if d.recipient not in dropped]
    if kept and all(d.action is Action.QUARANTINE for d in kept):
        action = Action.QUARANTINE
    elif any(d.action in (Action.TAG, Action.QUARANTINE, Action.REJECT) for d in kept):
        action = Action.TAG
    else:
        action = Action.ACCEPT
    is_spam = any(d.category is Category.SPAM for d in kept)
    headers = _headers(is_spam, score, threshold, action, trace + _recipient_steps(kept), reasons)
    prefix = policy.subject_prefix if action is Action.TAG and is_spam else ""
    return Verdict(action, category, score, threshold, None, tuple(decisions), tuple(trace),
                   reasons, drop_recipients=dropped, headers=headers, subject_prefix=prefix)


def _message_category(decisions: list[RecipientDecision]) -> Category:
    order = (Category.VIRUS, Category.ERROR, Category.SPAM, Category.BLOCKED, Category.ALLOWED)
    present = {d.category for d in decisions}
    for cat in order:
        if cat in present:
            return cat
    return Category.CLEAN


SPAM_HEADERS = ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status")


def _recipient_steps(kept: list[RecipientDecision]) -> list[TraceStep]:
    """What the shared header may say about recipients: one recipient's own
    steps, or for several only counts (their addresses and lists are private)."""
    if len(kept) == 1:
        return [*kept[0].trace, TraceStep("decision", kept[0].action.value, kept[0].reason)]
    counts: dict[str, int] = {}
    for d in kept:
        counts[d.category.value] = counts.get(d.category.value, 0) + 1
    return [TraceStep("recipients", ",".join(f"{n}_{c}" for c, n in sorted(counts.items())))]


def _headers(is_spam: bool, score: float | None, threshold: float | None, action: Action,
             trace: list[TraceStep], reasons: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    flag = "YES" if is_spam else "NO"
    parts = [("Yes" if is_spam else "No")]
    if score is not None:
        parts.append(f"score={score:.4f}")
    if threshold is not None:
        parts.append(f"threshold={threshold:.4f}")
    parts.append(f"action={action.value}")
    parts.append("trace=" + ";".join(str(s).replace(" ", "_") for s in trace)[:500])
    if reasons:
        parts.append("reasons=" + ",".join(r.replace(" ", "_") for r in reasons)[:300])
    status = " ".join(parts)
    out = [("X-Spam-Flag", flag), ("X-Spam-Status", status)]
    if score is not None:
        out.insert(1, ("X-Spam-Score", f"{score:.4f}"))
    return tuple(out)


# -- the impure half: calling the checks -------------------------------------

ModelSource = Callable[[], Model]
ListSource = Callable[[], ListIndex]


def gather(msg: ParsedMessage, stream: Stream | None, scanner: Scanner | None,
           model: ModelSource, lists: ListSource, oversize: bool = False,
           skip_content_checks: bool = False, tokens: set[str] | None = None,
           envelope: Envelope | None = None, authenticator: Authenticator | None = None) -> Findings:
    """Run the checks through their interfaces; typed errors become findings.

    ``tokens`` are the message's features when the caller has them already.
    The sender is authenticated (DNS) only when that can change the outcome:
    an allow entry would match, or the authenticator checks all mail.
    """
    scan = scan_error = None
    if scanner is not None and stream is not None and not skip_content_checks:
        try:
            scan = scanner.scan(stream)
        except ScannerError as exc:
            scan_error = str(exc)
    index = store_error = None
    try:
        index = lists()
    except StoreError as exc:
        store_error = str(exc)
    score = threshold = model_error = None
    if not skip_content_checks and not (scan is not None and scan.infected):
        try:
            current = model()
            score = current.score(tokens if tokens is not None else features(msg))
            threshold = current.spam_threshold
        except ModelError as exc:
            model_error = str(exc)
    auth = None
    if authenticator is not None and envelope is not None and index is not None and (
            authenticator.every_message or allow_may_apply(index, envelope.sender, envelope.recipients, msg)):
        auth = authenticator.check(envelope.sender, envelope.client_ip, envelope.helo, msg.headers,
                                   lambda: _whole(stream))
    return Findings(scan=scan, scan_error=scan_error, score=score, model_threshold=threshold,
                    model_error=model_error, lists=index, store_error=store_error,
                    oversize=oversize, auth=auth)


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
             authenticator: Authenticator | None = None) -> Verdict:
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
                   envelope=envelope, authenticator=authenticator)
    return decide(envelope, msg, found, policy)
