"""What the checks found (``Findings``): the one value ``engine.gather`` hands
``precedence.decide``, a failed check's typed error kept as an error string."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stronghold.antivirus import ScanResult
from stronghold.authres import AuthResults
from stronghold.classifier import Score
from stronghold.lists import ListIndex
from stronghold.verdict import Check, CheckResult, TraceStep


@dataclass(frozen=True, init=False)
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

    def __init__(self, scan: ScanResult | None = None, scan_error: str | None = None, score: Score | None = None,
                 model_threshold: float | None = None, model_error: str | None = None,
                 lists: ListIndex | None = None, store_error: str | None = None, oversize: bool = False,
                 notes: tuple[TraceStep, ...] = (), auth: AuthResults | None = None,
                 personal: Mapping[str, Score] | None = None) -> None:
        values = self.__dict__  # frozen: filled at once (as verdict.TraceStep, whose module says why)
        values["scan"] = scan
        values["scan_error"] = scan_error
        values["score"] = score
        values["model_threshold"] = model_threshold
        values["model_error"] = model_error
        values["lists"] = lists
        values["store_error"] = store_error
        values["oversize"] = oversize
        values["notes"] = notes
        values["auth"] = auth
        values["personal"] = {} if personal is None else personal


_FINE = {check: CheckResult(check) for check in Check}  # a check that ran and did not fail (values: shared)


def _result(check: Check, error: str | None) -> CheckResult:
    return _FINE[check] if error is None else CheckResult(check, error)


def checks_run(found: Findings) -> tuple[CheckResult, ...]:
    """Each check that ran, and whether it failed (for the service's incident reports)."""
    out: list[CheckResult] = []
    if found.scan_error is not None or found.scan is not None:
        out.append(_result(Check.ANTIVIRUS, found.scan_error))
    if found.store_error is not None or found.lists is not None:
        out.append(_result(Check.LISTS, found.store_error))
    if found.model_error is not None or found.score is not None:
        out.append(_result(Check.CLASSIFIER, found.model_error))
    if found.auth is not None:
        out.append(_result(Check.AUTH, "DNS failed: " + found.auth.describe() if found.auth.dns_failed else None))
    return tuple(out)
