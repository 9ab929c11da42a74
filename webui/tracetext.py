"""A stored trace (``Verdict.summary``) read back into steps, for the web UI's explanations.

The trace is ``step=outcome(detail) ... rcpt=<address>:action(reason)[step=outcome(detail)]...``:
message steps first, then each recipient's decision with its own steps in brackets.
Details may hold spaces and nested parentheses; only balanced ones count as nesting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stronghold.authres import AuthResults, domain_of


@dataclass(frozen=True)
class Step:
    step: str
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class Trace:
    steps: tuple[Step, ...] = ()  # of the message
    recipients: dict[str, tuple[Step, ...]] = field(default_factory=dict)  # address -> its own steps

    def all_steps(self) -> list[Step]:
        return [*self.steps, *(s for steps in self.recipients.values() for s in steps)]

    def find(self, step: str) -> Step | None:
        return next((s for s in self.steps if s.step == step), None)


_OPEN = {"(": ")", "[": "]"}


def _tokens(text: str) -> list[str]:
    """``text`` split at spaces outside parentheses and brackets."""
    out, start, stack = [], 0, []
    for i, ch in enumerate(text):
        if ch in _OPEN:
            stack.append(_OPEN[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
        elif ch == " " and not stack:
            if i > start:
                out.append(text[start:i])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    joined: list[str] = []
    for token in out:  # "auth=header mx.example(...)": an outcome with a space
        if joined and "=" not in token.split("(", 1)[0]:
            joined[-1] += " " + token
        else:
            joined.append(token)
    return joined


def _step(token: str) -> Step:
    name, _, rest = token.partition("=")
    open_at = rest.find("(")
    if open_at < 0 or not rest.endswith(")"):
        return Step(name, rest)
    return Step(name, rest[:open_at], rest[open_at + 1:-1])


def _bracketed(text: str) -> list[str]:
    """The contents of ``[a][b]...`` (nesting of brackets and parentheses kept)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            if depth == 0 and ch == "[":
                start = i + 1
            depth += 1
        elif ch in "])" and depth:
            depth -= 1
            if depth == 0 and ch == "]":
                out.append(text[start:i])
    return out


def parse(trace: str) -> Trace:
    steps: list[Step] = []
    recipients: dict[str, tuple[Step, ...]] = {}
    for token in _tokens(trace or ""):
        if token.startswith("rcpt=<") and ">:" in token:
            address, _, rest = token[len("rcpt=<"):].partition(">:")
            recipients[address.lower()] = tuple(_step(t) for t in _bracketed(rest[rest.find("["):])
                                                ) if "[" in rest else ()
        elif "=" in token:
            steps.append(_step(token))
    return Trace(tuple(steps), recipients)


def _auth_results(step: Step) -> AuthResults:
    """The parts of an ``auth=`` step's detail that say who was authenticated."""
    spf, spf_domain, dkim = "none", "", []
    for part in step.detail.split(" "):
        if part.startswith("spf="):
            value = _step(part)
            spf, spf_domain = value.outcome, value.detail
        elif part.startswith("dkim=") and part != "dkim=none":
            for one in part[len("dkim="):].split(","):
                value = _step("x=" + one)
                dkim.append((value.detail, value.outcome))
    return AuthResults(step.outcome, spf=spf, spf_domain=spf_domain, dkim=tuple(dkim))


def sender_authenticated(trace: str | Trace, source: str, address: str) -> bool | None:
    """Was ``address`` (``source`` "from" or "envelope") authenticated for this message, as its
    trace (text, or already parsed) tells it: True, False, or None when authentication was not checked."""
    parsed = parse(trace) if isinstance(trace, str) else trace
    address = address.lower()
    for s in parsed.all_steps():
        if s.step == "allow" and s.outcome == "skipped" and f" {address} not authenticated" in s.detail.lower():
            return False
    auth = parsed.find("auth")
    if auth is None:
        return None
    dmarc = parsed.find("dmarc")
    if dmarc is not None and dmarc.outcome == "fail":  # allow entries are skipped under a DMARC failure
        return False
    results = _auth_results(auth)
    if source == "from":
        results = AuthResults(results.source, results.spf, results.spf_domain, results.dkim,
                              from_domain=domain_of(address))
    return results.authenticates(source, address)


@dataclass(frozen=True)
class ListRule:
    """The list entry that decided for a recipient, as its trace step names it."""

    kind: str  # "block" or "allow"
    owner: str  # "global", or the address whose list it is
    pattern: str

    @property
    def is_global(self) -> bool:
        """Whether it is on the administrators' lists for everyone."""
        return self.owner == "global"


def list_rule(trace: Trace, address: str, alone: bool) -> ListRule | None:
    """The list entry that decided for ``address`` (a ``block=``/``allow=`` step that matched), if
    one did. ``alone``: it was the message's only recipient, so a refusal at RCPT time, whose steps
    are the whole trace (no ``rcpt=<...>[...]``), counts too."""
    steps = trace.recipients.get(address.lower())
    if steps is None:
        steps = trace.steps if alone else ()
    for step in steps:
        if step.step in ("block", "allow") and step.outcome in ("match", "rcpt"):
            owner, kind, _number, pattern = [*step.detail.split(" ", 4), "", "", "", ""][:4]
            if kind == step.step and pattern:
                return ListRule(kind, owner, pattern)
    return None
