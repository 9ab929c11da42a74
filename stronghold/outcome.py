"""What deciding about one message produced: the verdict, the tokens to log, the time it took."""

from __future__ import annotations

from dataclasses import dataclass, field

from stronghold.verdict import Verdict


@dataclass
class Outcome:
    verdict: Verdict
    tokens: set[str] | None
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (metrics.STAGES)
