"""Log lines a machine can read: the per-message line, its JSON form, the worker id.

The milter logs each message once, as a ``MessageLine`` (and each RCPT-stage
refusal as a ``RcptLine``) passed as the only argument of a ``log.info("%s",
...)`` call.  The text format prints ``str(line)``: ``key=value`` pairs whose
free-text values (trace, reasons) are JSON-quoted so they split cleanly; the
JSON format (``log_format = "json"``) writes one object per line, and for
these two the object carries their fields (queue id, recipients, each
recipient's decision, score, trace steps as a list, ms per stage); a message
answered tempfail before it had a verdict (its spool failed) is a ``FailedLine``.  Both
formats name the worker (``w1``, ``w2``...; ``main`` for the supervisor) and
its pid in every line.  Nothing is formatted unless the line is emitted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stronghold.outcome import Outcome
    from stronghold.verdict import Envelope, RecipientDecision, TraceStep

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s [%(worker)s %(process)d] %(message)s"
_worker = "main"


def set_worker(name: str) -> None:
    """Name this process in every line it logs from now on (after fork, in the worker)."""
    global _worker
    _worker = name


def _steps(trace: tuple[TraceStep, ...]) -> list[str]:
    return [str(step) for step in trace]


def _decision(d: RecipientDecision) -> dict[str, Any]:
    return {"recipient": d.recipient, "action": d.action.value, "category": d.category.value,
            "reason": d.reason, "route": d.route.value, "trace": _steps(d.trace)}


class MessageLine:
    """The one line per decided message."""

    __slots__ = ("envelope", "outcome")

    def __init__(self, envelope: Envelope, outcome: Outcome) -> None:
        self.envelope = envelope
        self.outcome = outcome

    def __str__(self) -> str:
        env, v = self.envelope, self.outcome.verdict
        score = f"{v.score:.4f}" if v.score is not None else "-"
        return (f"{env.queue_id or '-'}: from=<{env.sender}> "
                f"to={','.join('<' + r + '>' for r in env.recipients)} score={score} "
                f"verdict={v.category.value} action={v.action.value} "
                f"ms={self.outcome.seconds * 1000:.1f} trace={json.dumps(v.summary)} "
                f"reasons={json.dumps(','.join(v.reasons[:5]))}")

    def fields(self) -> dict[str, Any]:
        env, v = self.envelope, self.outcome.verdict
        return {"event": "message", "queue_id": env.queue_id, "from": env.sender,
                "recipients": list(env.recipients), "client_ip": env.client_ip,
                "verdict": v.category.value, "action": v.action.value, "score": v.score,
                "threshold": v.threshold, "virus": v.virus, "trace": _steps(v.trace),
                "decisions": [_decision(d) for d in v.decisions], "reasons": list(v.reasons[:5]),
                "ms": {stage: round(s * 1000, 3) for stage, s in self.outcome.stages.items()}}


class RcptLine:
    """A recipient refused at RCPT (its sender is on the recipient's or the global block list)."""

    __slots__ = ("decision", "envelope")

    def __init__(self, envelope: Envelope, decision: RecipientDecision) -> None:
        self.envelope = envelope
        self.decision = decision

    def __str__(self) -> str:
        env, d = self.envelope, self.decision
        return (f"{env.queue_id or '-'}: from=<{env.sender}> to=<{d.recipient}> verdict={d.category.value} "
                f"action={d.action.value} stage=rcpt trace={json.dumps(' '.join(_steps(d.trace)))}")

    def fields(self) -> dict[str, Any]:
        env, d = self.envelope, self.decision
        return {"event": "rcpt_reject", "stage": "rcpt", "queue_id": env.queue_id, "from": env.sender,
                "recipients": [d.recipient], "client_ip": env.client_ip, "verdict": d.category.value,
                "action": d.action.value, "score": None, "trace": _steps(d.trace),
                "decisions": [_decision(d)]}


class FailedLine:
    """A message answered tempfail before any verdict existed (its spool failed): who, and why."""

    __slots__ = ("envelope", "reason")

    def __init__(self, envelope: Envelope, reason: str) -> None:
        self.envelope = envelope
        self.reason = reason

    def __str__(self) -> str:
        env = self.envelope
        return (f"{env.queue_id or '-'}: from=<{env.sender}> "
                f"to={','.join('<' + r + '>' for r in env.recipients)} action=tempfail "
                f"reasons={json.dumps(self.reason)}")

    def fields(self) -> dict[str, Any]:
        env = self.envelope
        return {"event": "message", "queue_id": env.queue_id, "from": env.sender,
                "recipients": list(env.recipients), "client_ip": env.client_ip, "verdict": None,
                "action": "tempfail", "score": None, "reasons": [self.reason]}


class WorkerFilter(logging.Filter):
    """Adds ``worker`` (this process's name) to every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = _worker
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, its time of day formatted once a second (not once a line)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._text, record.msecs)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a MessageLine, RcptLine or FailedLine contributes its fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name,
            "worker": getattr(record, "worker", _worker), "pid": record.process or os.getpid()}
        args = record.args
        line = args[0] if isinstance(args, tuple) and len(args) == 1 else None
        if isinstance(line, (MessageLine, RcptLine, FailedLine)):
            out.update(line.fields())
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(log_format: str) -> None:
    """Give the root logger's handlers the chosen format and the worker id (called once, in main)."""
    formatter = JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, WorkerFilter) for f in handler.filters):
            handler.addFilter(WorkerFilter())
