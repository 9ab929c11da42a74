"""Per-message log lines: the text form splits into key=value pairs, the JSON form is one object."""

from __future__ import annotations

import json
import logging
import shlex

from stronghold import logfmt
from stronghold.logfmt import FailedLine, JsonFormatter, MessageLine, RcptLine
from stronghold.message import parse
from stronghold.outcome import Outcome
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.verdict import Action, Category, Envelope, RecipientDecision, TraceStep
from tests.unit.test_engine import found

ENV = Envelope("s@env.example", ("a@x.example", "b@x.example"), "192.0.2.1", "helo", "4Q1XyZ")
MSG = parse(b"From: s@from.example\r\nSubject: hi\r\n\r\nhello\r\n")


def _outcome() -> Outcome:
    verdict = decide(ENV, MSG, found(0.95), Policy())
    return Outcome(verdict, None, 0.0021, {"parse": 0.0002, "clamd": 0.001, "total": 0.0025})


def _record(line: object) -> logging.LogRecord:
    record = logging.LogRecord("stronghold.milter", logging.INFO, __file__, 1, "%s", (line,), None)
    logfmt.WorkerFilter().filter(record)
    return record


def test_text_line_splits_into_pairs_whatever_the_trace_holds() -> None:
    line = str(MessageLine(ENV, _outcome()))
    pairs = dict(p.split("=", 1) for p in shlex.split(line.split(": ", 1)[1]))
    assert pairs["trace"] == _outcome().verdict.summary  # spaces and parentheses kept, one value
    assert " " in pairs["trace"] and "(" in pairs["trace"]
    assert pairs["verdict"] == "spam" and pairs["action"] == "tag" and line.startswith("4Q1XyZ: ")


def test_json_message_object_has_each_recipients_decision_and_stages() -> None:
    logfmt.set_worker("w2")
    try:
        obj = json.loads(JsonFormatter().format(_record(MessageLine(ENV, _outcome()))))
    finally:
        logfmt.set_worker("main")
    assert obj["queue_id"] == "4Q1XyZ" and obj["recipients"] == ["a@x.example", "b@x.example"]
    assert [(d["recipient"], d["action"]) for d in obj["decisions"]] == [("a@x.example", "tag"),
                                                                         ("b@x.example", "tag")]
    assert obj["score"] == 0.95 and obj["worker"] == "w2" and obj["event"] == "message"
    assert obj["trace"][0] == "antivirus=clean" and isinstance(obj["trace"], list)
    assert obj["ms"] == {"parse": 0.2, "clamd": 1.0, "total": 2.5}


def test_json_rcpt_line_and_plain_lines() -> None:
    decision = RecipientDecision("a@x.example", Action.REJECT, Category.BLOCKED, "sender blocked",
                                 (TraceStep("block", "rcpt", "#3 @env.example"),))
    obj = json.loads(JsonFormatter().format(_record(RcptLine(ENV, decision))))
    assert obj["stage"] == "rcpt" and obj["queue_id"] == "4Q1XyZ" and obj["action"] == "reject"
    assert obj["trace"] == ["block=rcpt(#3 @env.example)"]
    text = str(RcptLine(ENV, decision))
    assert shlex.split(text)[-1] == "trace=block=rcpt(#3 @env.example)"
    plain = logging.LogRecord("x", logging.WARNING, __file__, 1, "clamd failing: %s", ("down",), None)
    assert json.loads(JsonFormatter().format(plain))["msg"] == "clamd failing: down"



def test_a_message_failed_before_its_verdict_is_an_event_with_fields_in_both_formats() -> None:
    line = FailedLine(ENV, "spool failed: [Errno 28] No space left on device")
    obj = json.loads(JsonFormatter().format(_record(line)))
    assert obj["event"] == "message" and obj["action"] == "tempfail" and obj["queue_id"] == "4Q1XyZ"
    assert obj["recipients"] == ["a@x.example", "b@x.example"] and obj["verdict"] is None
    assert obj["reasons"] == ["spool failed: [Errno 28] No space left on device"] and "msg" not in obj
    pairs = dict(p.split("=", 1) for p in shlex.split(str(line).split(": ", 1)[1]))
    assert pairs == {"from": "<s@env.example>", "to": "<a@x.example>,<b@x.example>", "action": "tempfail",
                     "reasons": "spool failed: [Errno 28] No space left on device"}


def test_text_formatter_writes_what_the_stdlib_formatter_does_across_seconds() -> None:
    ours, stdlib = logfmt.TextFormatter(logfmt.TEXT_FORMAT), logging.Formatter(logfmt.TEXT_FORMAT)
    for created in (1700000000.001, 1700000000.999, 1700000001.5, 1700000000.25, 1700003600.0):
        record = _record("x")
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == stdlib.format(record)
