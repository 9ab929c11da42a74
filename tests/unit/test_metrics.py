"""Metrics: what a message adds, how feedback becomes false negatives/positives, loopback only.

The milter's multiprocess counting through real Postfix is in tests/e2e/test_ops_postfix.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from stronghold.config import ROOT, ConfigError
from stronghold.incidents import Incidents
from stronghold.metrics import PromRecorder, StateCollector, feedback_families
from stronghold.outcome import Outcome
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import accounts, entries, messagelog, quarantine
from stronghold.store.db import Store
from tests.unit.test_engine import ENV, MSG, found


def _samples(metric: object) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value for fam in metric.collect()  # type: ignore[attr-defined]
            for s in fam.samples}


def test_a_message_counts_once_per_verdict_and_per_recipient() -> None:
    rec = PromRecorder()
    verdict = decide(ENV, MSG, found(0.95), Policy())
    rec.message(Outcome(verdict, None, 0.002, {"parse": 0.0003, "clamd": 0.001, "total": 0.002, "x": 1.0}))
    rec.message(Outcome(verdict, None, 0.002, {"total": 0.004}))
    assert _samples(rec.messages)[("stronghold_messages_total", ("spam", "tag"))] == 2
    assert _samples(rec.recipients)[("stronghold_recipients_total", ("spam", "tag", "eom"))] == 4
    stages = _samples(rec.stage)
    assert stages[("stronghold_stage_seconds_count", ("total",))] == 2
    assert stages[("stronghold_stage_seconds_count", ("parse",))] == 1
    assert stages[("stronghold_stage_seconds_sum", ("total",))] == pytest.approx(0.006)
    rec.incident("clamd", started=True)
    rec.incident("clamd", started=False)
    assert _samples(rec.failures)[("stronghold_dependency_failures_total", ("clamd",))] == 2
    assert _samples(rec.incidents)[("stronghold_incidents_total", ("clamd",))] == 1


def test_feedback_against_the_filters_decision() -> None:
    now, old = time.time(), time.time() - 3 * 86400
    marks = [("clean", True, now), ("allowed", True, old), ("spam", False, now), ("spam", True, now),
             ("clean", False, old), ("error", True, now)]
    fams = {f.name: f for f in feedback_families(marks)}
    value = {name: fams[name].samples[0].value for name in fams if len(fams[name].samples) == 1}
    assert value["stronghold_feedback_false_negatives"] == 2  # marked spam, passed as clean or allowed
    assert value["stronghold_feedback_false_positives"] == 1  # marked not spam, judged spam
    assert value["stronghold_feedback_false_negatives_last_day"] == 1
    assert value["stronghold_feedback_false_positives_last_day"] == 1
    by = {tuple(s.labels.values()): s.value for s in fams["stronghold_feedback_marks"].samples}
    assert by == {("spam", "clean"): 1, ("spam", "allowed"): 1, ("not_spam", "spam"): 1, ("spam", "spam"): 1,
                  ("not_spam", "clean"): 1, ("spam", "error"): 1}


def test_metrics_bind_is_loopback_only(make_config) -> None:
    assert make_config().metrics_bind == ""  # off unless set
    assert make_config(metrics_bind="127.0.0.1:9464").metrics_bind == "127.0.0.1:9464"
    assert make_config(metrics_bind="[::1]:9464").metrics_bind == "[::1]:9464"
    for bad in ("0.0.0.0:9464", "192.0.2.1:9464", "127.0.0.1", "127.0.0.1:x"):
        with pytest.raises(ConfigError):
            make_config(metrics_bind=bad)


def test_dashboard_asks_only_for_metrics_that_exist(make_config, tmp_path: Path) -> None:
    cfg = make_config(database_url=f"sqlite:///{tmp_path / 'm.db'}")
    with Store(cfg.db_url) as store:
        store.upgrade()
        served = {fam.name for fam in StateCollector(cfg, store).collect()}
    rec = PromRecorder()
    served |= {m._name for m in (rec.messages, rec.recipients, rec.stage, rec.failures, rec.incidents,
                                 rec.failing)}
    asked = set(re.findall(r"stronghold_[a-z_]+", (ROOT / "docs" / "grafana-dashboard.json").read_text()))
    assert len(asked) >= 10
    unknown = {n for n in asked if re.sub(r"_(bucket|sum|count|total)$", "", n) not in served}
    assert not unknown


def test_incidents_reach_the_recorder() -> None:
    incidents = Incidents()
    incidents.recorder = rec = PromRecorder()
    incidents.failed("clamd", "connection refused")
    incidents.failed("clamd", "connection refused")
    assert _samples(rec.failing)[("stronghold_dependency_failing", ("clamd",))] == 1
    incidents.ok("clamd")
    incidents.failed("database", "locked")
    assert _samples(rec.failures)[("stronghold_dependency_failures_total", ("clamd",))] == 2
    assert _samples(rec.incidents)[("stronghold_incidents_total", ("clamd",))] == 1
    assert _samples(rec.incidents)[("stronghold_incidents_total", ("database",))] == 1
    assert _samples(rec.failing)[("stronghold_dependency_failing", ("clamd",))] == 0


@pytest.mark.postgres
def test_scrape_reads_lists_quarantine_and_feedback(store: Store, make_config) -> None:
    """The same queries on SQLite and PostgreSQL."""
    cfg = make_config(database_url=str(store.engine.url.render_as_string(hide_password=False)))
    with store.session() as s:
        entries.add_entry(s, None, "block", "@spam.example")
        entries.add_entry(s, "m1@example.com", "allow", "@friend.example")
        entries.add_entry(s, "m1@example.com", "block", "@foe.example")
        quarantine.hold(s, b"Subject: x\r\n\r\nbody\r\n", recipients=["m1@example.com", "m2@example.com"],
                        sender="a@b.example", subject="x", queue_id="Q", score=0.99, category="spam",
                        reason="spam", trace="", virus=None)
        user = accounts.add_user(s, "m1@example.com", "correct horse battery staple 42")
        clean = messagelog.write(s, [messagelog.entry(ENV, MSG, decide(ENV, MSG, found(0.1), Policy()))])[0]
        spam = messagelog.write(s, [messagelog.entry(ENV, MSG, decide(ENV, MSG, found(0.95), Policy()))])[0]
        messagelog.set_feedback(s, clean, user.id, True)
        messagelog.set_feedback(s, spam, user.id, False)
    got = {(sample.name, tuple(sample.labels.values())): sample.value
           for fam in StateCollector(cfg, store).collect() for sample in fam.samples}
    assert got[("stronghold_database_up", ())] == 1
    assert got[("stronghold_list_entries", ("block", "global"))] == 1
    assert got[("stronghold_list_entries", ("allow", "user"))] == 1
    assert got[("stronghold_list_entries", ("block", "user"))] == 1
    assert got[("stronghold_quarantine_items", ())] == 2
    assert got[("stronghold_feedback_false_negatives_total", ())] == 1
    assert got[("stronghold_feedback_false_positives_total", ())] == 1
