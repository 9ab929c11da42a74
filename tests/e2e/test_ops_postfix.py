"""Running it on a mail server: /metrics, JSON logs joined with Postfix's, the size policy.

One stack (real Postfix, clamd and `stronghold milter` with two workers) with
the operator settings on and the default size policy: 20 messages of known
outcome go through it, then /metrics must show exactly those counts, every
JSON log line must parse and join with Postfix's maillog on the queue id
(RCPT-stage refusals included), and a user's "spam" mark must move the false
negative counter.
"""

from __future__ import annotations

import base64
import json
import shutil
import smtplib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.localstack import Clamd, free_port, wait_for
from stronghold.antivirus import EICAR
from stronghold.classifier import Model
from stronghold.config import SETTINGS
from stronghold.modelfile import model_id
from stronghold.service import VERSION
from stronghold.store import accounts, entries, messagelog
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files, shared_tmpdir
from tests.e2e import mail

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]
RCPT = "ops@example.com"


@pytest.fixture(scope="module")
def ops_stack(models_dir: Path, clamd: Clamd) -> Iterator[Stack]:
    home = shared_tmpdir("stronghold-ops-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}", log_format="json",
              metrics_bind=f"127.0.0.1:{free_port()}",
              max_message_bytes=SETTINGS["max_message_bytes"].default)  # the default size policy
    assert "oversize_action" not in s.milter.settings
    s.start()
    wait_for(lambda: _scrape_ok(s), 30, "metrics endpoint")
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def _scrape_ok(stack: Stack) -> bool:
    try:
        _scrape(stack)
        return True
    except OSError:
        return False


def _scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://{stack.milter.settings['metrics_bind']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _picked(corpus: Path, model: Model, label: str, count: int, keep) -> list[bytes]:
    out = []
    for path in corpus_files(corpus, label):
        raw = path.read_bytes()
        if len(raw) < 20_000 and keep(model.score(tokenize(raw)).probability):
            out.append(raw)
            if len(out) == count:
                return out
    raise AssertionError(f"not {count} {label} messages far enough from the threshold")


def _send(stack: Stack, sender: str, data: bytes) -> str:
    """'sent', or the SMTP code and stage of the refusal."""
    try:
        mail.send(stack.postfix.port, sender, [RCPT], data)
    except smtplib.SMTPRecipientsRefused as exc:
        return f"rcpt {exc.recipients[RCPT][0]}"
    except smtplib.SMTPDataError as exc:
        return f"data {exc.smtp_code}"
    return "sent"


def _events(stack: Stack) -> list[dict]:
    return [json.loads(line) for line in stack.milter.log().splitlines() if line.startswith("{")]


def test_metrics_logs_and_feedback_after_twenty_known_messages(ops_stack: Stack, corpus: Path,
                                                               model: Model) -> None:
    stack = ops_stack
    threshold = model.spam_threshold
    with stack.store.session() as s:
        entries.add_entry(s, None, "block", "@rcptblock.example")  # refused at RCPT (envelope sender)
        entries.add_entry(s, None, "block", "@hdrblock.example")  # refused at end of message (From)
    hams = _picked(corpus, model, "ham", 8, lambda p: p < min(0.01, threshold / 10))
    spams = _picked(corpus, model, "spam", 6, lambda p: p >= 0.9999)
    results: list[str] = []
    sent_ids = []
    for raw in hams + spams:
        tid, data = mail.tagged(raw)
        sent_ids.append(tid)
        results.append(_send(stack, "list@sender.example", data))
    for _ in range(3):
        results.append(_send(stack, "carol@sender.example", mail.with_eicar()[1]))
    _, data = mail.simple(sender="boss@hdrblock.example", subject="blocked by From")
    results.append(_send(stack, "bounce@fine.example", data))
    for n in range(2):
        results.append(_send(stack, f"x{n}@rcptblock.example", mail.simple(sender=f"x{n}@rcptblock.example")[1]))
    assert len(results) == 20
    assert results == ["sent"] * 14 + ["data 554"] * 3 + ["data 550"] + ["rcpt 550"] * 2, \
        (results, stack.milter.log()[-4000:])  # an EICAR once came back "sent" under load: say why next time
    delivered = [stack.sink.wait_for(lambda m, t=tid: f"X-Test-Id: {t}".encode() in m.data)[0]
                 for tid in sent_ids]
    passport = model.passport
    for got in delivered:
        assert mail.headers(got.data)["X-Stronghold-Version"] == \
            f"{VERSION} model {model_id(passport)}"

    metrics = _scrape(stack)

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("stronghold_messages_total", verdict="clean", action="accept") == 8
    assert value("stronghold_messages_total", verdict="spam", action="tag") == 6
    assert value("stronghold_messages_total", verdict="virus", action="reject") == 3
    assert value("stronghold_messages_total", verdict="blocked", action="reject") == 1
    assert sum(v for (n, _), v in metrics.items() if n == "stronghold_messages_total") == 18
    assert value("stronghold_recipients_total", verdict="blocked", action="reject", stage="rcpt") == 2
    assert value("stronghold_recipients_total", verdict="spam", action="tag", stage="eom") == 6
    for stage in ("parse", "clamd", "lists", "classifier", "total"):
        assert value("stronghold_stage_seconds_count", stage=stage) == 18, stage
    assert value("stronghold_list_entries", kind="block", scope="global") == 2
    assert value("stronghold_quarantine_items") == 0
    info = [(dict(k), v) for (n, k), v in metrics.items() if n == "stronghold_model_info"]
    assert [(lbl["model"], v) for lbl, v in info] == [(model_id(passport), 1)]
    assert 0 < value("stronghold_model_age_seconds") < 86400
    assert value("stronghold_feedback_false_negatives_total") == 0

    # JSON lines: each parses, names its worker, and joins with Postfix's log on the queue id
    stack.milter.wait_log('"event": "rcpt_reject"')
    events = [e for e in _events(stack) if e.get("event") in ("message", "rcpt_reject")]
    assert len(events) == 20
    assert all(e["worker"] in ("w1", "w2") and e["queue_id"] for e in events)
    assert all(isinstance(e["trace"], list) and e["decisions"][0]["recipient"] == RCPT for e in events)
    lines = [ln for ln in stack.milter.log().splitlines() if ln.strip()]
    assert all(ln.startswith("{") for ln in lines if not ln.startswith("stronghold milter: listening"))
    assert all("worker" in json.loads(ln) for ln in lines if ln.startswith("{"))

    def joined(e: dict) -> bool:
        qid = e["queue_id"]
        maillog = stack.postfix.log()
        if e["event"] == "rcpt_reject":
            return f"{qid}: milter-reject: RCPT from" in maillog and f"to=<{RCPT}>" in maillog
        if e["action"] == "reject":
            return f"{qid}: milter-reject: END-OF-MESSAGE from" in maillog
        return any(ln.split(": ", 1)[-1].startswith(f"{qid}: to=<{RCPT}>") and "status=sent" in ln
                   for ln in maillog.splitlines())
    wait_for(lambda: all(joined(e) for e in events), 30, "every JSON line's queue id in Postfix's log")
    assert all(e["ms"]["total"] > 0 for e in events if e["event"] == "message")

    # a user marks a message the filter passed as clean "spam": a false negative
    wait_for(lambda: _logged_clean(stack) is not None, 30, "message log rows")
    with stack.store.session() as s:
        user = accounts.add_user(s, RCPT, "correct horse battery staple 42")
        messagelog.set_feedback(s, _logged_clean(stack), user.id, True)
    after = _scrape(stack)
    assert after[("stronghold_feedback_false_negatives_total", ())] == 1
    assert after[("stronghold_feedback_false_positives_total", ())] == 0
    assert after[("stronghold_feedback_marks_total", (("decided", "clean"), ("mark", "spam")))] == 1


def _logged_clean(stack: Stack) -> int | None:
    with stack.store.session() as s:
        rows = messagelog.recent(s, messagelog.LogFilter(addresses=(RCPT,)))
        return next((r.id for r in rows if r.category == "clean"), None)


def test_27_mb_message_with_eicar_at_the_end_is_not_delivered_by_default(ops_stack: Stack) -> None:
    filler = ("The quarterly figures follow in full detail. " * 2)[:76] + "\r\n"
    body = filler * (27 * 1024 * 1024 // len(filler))
    attachment = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    tid, data = mail.tagged((
        "From: carol@sender.example\r\nTo: ops@example.com\r\nSubject: the big report\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
        f"{body}\r\n--b1\r\nContent-Type: application/octet-stream; name=\"tail.com\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{attachment}--b1--\r\n").encode())
    assert len(data) > 27 * 1024 * 1024
    assert _send(ops_stack, "carol@sender.example", data) == "data 552"
    event = next(e for e in reversed(_events(ops_stack)) if e.get("event") == "message")
    assert event["action"] == "reject" and event["trace"] == ["size=oversize(reject)"]
    assert not [m for m in ops_stack.sink.messages if f"X-Test-Id: {tid}".encode() in m.data]
    assert not ops_stack.postfix.queue()
