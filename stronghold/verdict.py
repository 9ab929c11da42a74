"""The values the engine takes and returns: the envelope, actions, per-recipient decisions, traces.

The values built several times per message (``TraceStep``, ``RecipientDecision``, ``Verdict``)
are frozen dataclasses with an ``__init__`` of their own that fills the instance's dict in one
go: the generated one of a frozen dataclass sets each field through ``object.__setattr__``, two
to three times as slow.  Equality, hashing, ``repr``, ``replace`` and the refusal to be changed
are the dataclass's; tests/unit/test_values.py checks each ``__init__`` against the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stronghold.authres import AuthResults


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope of one message, as the milter saw it."""

    sender: str
    recipients: tuple[str, ...]
    client_ip: str = ""
    helo: str = ""
    queue_id: str = ""


class Action(StrEnum):
    """What happens to a message (or to one recipient of it)."""

    ACCEPT = "accept"
    TAG = "tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ACCEPT: 0, Action.TAG: 1, Action.QUARANTINE: 2, Action.REJECT: 3,
             Action.TEMPFAIL: 4}


class Category(StrEnum):
    """Why, in one word: what the UI filters on."""

    CLEAN = "clean"
    SPAM = "spam"
    VIRUS = "virus"
    BLOCKED = "blocked"
    ALLOWED = "allowed"
    ERROR = "error"


class Route(StrEnum):
    """Where one recipient's copy goes once every recipient has an outcome."""

    REFUSE = "refuse"  # part of a message-wide SMTP reply (reject or tempfail)
    DROP = "drop"  # delrcpt: rejected for this recipient alone
    HOLD = "hold"  # delrcpt + one row in Stronghold's quarantine
    DELIVER = "deliver"  # the delivered copy, clean
    DELIVER_TAGGED = "deliver-tagged"  # the delivered copy, tagged (the Sieve rule files it in Junk)

    @property
    def delivered(self) -> bool:
        return self in _DELIVERED


_DELIVERED = frozenset({Route.DELIVER, Route.DELIVER_TAGGED})


@dataclass(frozen=True, init=False)
class TraceStep:
    """One step of the precedence table and what it saw."""

    step: str
    outcome: str
    detail: str = ""

    def __init__(self, step: str, outcome: str, detail: str = "") -> None:
        values = self.__dict__  # frozen: filled here, once (see the module's docstring)
        values["step"] = step
        values["outcome"] = outcome
        values["detail"] = detail

    def __str__(self) -> str:
        if self.detail:
            return f"{self.step}={self.outcome}({self.detail})"
        return f"{self.step}={self.outcome}"


@dataclass(frozen=True, init=False)
class RecipientDecision:
    """One recipient's own outcome (``action``) and where their copy goes.

    Unrouted decisions default to REFUSE: nothing is delivered unless the
    routing table (``routing.ROUTES``) says so.
    """

    recipient: str
    action: Action
    category: Category
    reason: str
    trace: tuple[TraceStep, ...] = ()
    route: Route = Route.REFUSE
    rule: str = ""  # the row of precedence.PRECEDENCE that decided ("" when built by hand)

    def __init__(self, recipient: str, action: Action, category: Category, reason: str,
                 trace: tuple[TraceStep, ...] = (), route: Route = Route.REFUSE, rule: str = "") -> None:
        values = self.__dict__  # frozen: filled here, once (see the module's docstring)
        values["recipient"] = recipient
        values["action"] = action
        values["category"] = category
        values["reason"] = reason
        values["trace"] = trace
        values["route"] = route
        values["rule"] = rule


class Check(StrEnum):
    """The checks a message goes through (engine.gather), each of which can fail."""

    ANTIVIRUS = "antivirus"
    LISTS = "lists"
    CLASSIFIER = "classifier"
    AUTH = "auth"


@dataclass(frozen=True)
class CheckResult:
    """One check that ran for a message: fine, or failed and why (typed, never read back from the trace)."""

    check: Check
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True, init=False)
class Verdict:
    """The engine's answer for a whole message."""

    action: Action
    category: Category
    score: float | None
    threshold: float | None
    virus: str | None
    decisions: tuple[RecipientDecision, ...]
    trace: tuple[TraceStep, ...]
    reasons: tuple[str, ...] = ()
    smtp_reply: tuple[str, str, str] | None = None  # (code, xcode, text) for reject/tempfail
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # for the delivered copy
    subject_prefix: str = ""
    auth: AuthResults | None = None  # sender authentication, when it was checked
    checks: tuple[CheckResult, ...] = ()  # each check that ran, fine or failed

    def __init__(self, action: Action, category: Category, score: float | None, threshold: float | None,
                 virus: str | None, decisions: tuple[RecipientDecision, ...], trace: tuple[TraceStep, ...],
                 reasons: tuple[str, ...] = (), smtp_reply: tuple[str, str, str] | None = None,
                 headers: tuple[tuple[str, str], ...] = (), subject_prefix: str = "",
                 auth: AuthResults | None = None, checks: tuple[CheckResult, ...] = ()) -> None:
        values = self.__dict__  # frozen: filled here, once (see the module's docstring)
        values["action"] = action
        values["category"] = category
        values["score"] = score
        values["threshold"] = threshold
        values["virus"] = virus
        values["decisions"] = decisions
        values["trace"] = trace
        values["reasons"] = reasons
        values["smtp_reply"] = smtp_reply
        values["headers"] = headers
        values["subject_prefix"] = subject_prefix
        values["auth"] = auth
        values["checks"] = checks

    def check(self, which: Check) -> CheckResult | None:
        """How ``which`` went for this message; None when it did not run."""
        for found in self.checks:
            if found.check is which:
                return found
        return None

    @property
    def delivered(self) -> tuple[str, ...]:
        """Recipients who receive the (one) delivered copy."""
        return tuple([d.recipient for d in self.decisions if d.route.delivered])

    @property
    def held(self) -> tuple[RecipientDecision, ...]:
        """Recipients whose copy goes into Stronghold's quarantine."""
        return tuple([d for d in self.decisions if d.route is Route.HOLD])

    @property
    def drop_recipients(self) -> tuple[str, ...]:
        """Recipients removed after DATA and logged as rejected for them."""
        return tuple([d.recipient for d in self.decisions if d.route is Route.DROP])

    @property
    def summary(self) -> str:
        """Message steps then each recipient's decision, as one line for logs (built once:
        the log line and the message-log row both use it; kept beside the fields, outside
        equality and ``replace``, without the lock ``functools.cached_property`` takes)."""
        values = self.__dict__
        line = values.get("_summary")
        if line is None:
            line = values["_summary"] = self._summarize()
        return line

    def _summarize(self) -> str:
        parts = [str(step) for step in self.trace]
        for d in self.decisions:
            steps = "".join([f"[{s}]" for s in d.trace])
            parts.append(f"rcpt=<{d.recipient}>:{d.action.value}({d.reason}){steps}")
        return " ".join(parts)
