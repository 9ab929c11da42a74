"""Prometheus metrics: counted in every milter worker, served by one process on loopback.

The milter's pre-forked workers count into files (prometheus_client's
multiprocess mode, a folder under ``data_dir``); a small process forked by the
supervisor serves ``/metrics`` on ``metrics_bind``, merging those files and
adding what is read at scrape time from the model's passport and the database
(list sizes, quarantine size, feedback against what the filter decided).  Per
message the workers pay a few counter increments and histogram observations;
nothing is computed per message that a scrape can compute instead.

With ``metrics_bind`` empty nothing here is imported by the milter path beyond
``NULL`` (a recorder whose methods do nothing).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stronghold.config import Config
from stronghold.modelfile import ModelError, model_id, read_passport
from stronghold.store.errors import StoreError

if TYPE_CHECKING:
    from stronghold.outcome import Outcome
    from stronghold.store.db import Store
    from stronghold.verdict import RecipientDecision

log = logging.getLogger(__name__)

STAGES = ("parse", "clamd", "classifier", "lists", "auth", "total")
# Message latencies: a clean message takes ~1-5 ms, clamd on a big one up to seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What the filter decided, as the user's mark compares with it.
SAID_SPAM = ("spam", "virus", "blocked")
SAID_HAM = ("clean", "allowed")


class Recorder:
    """Does nothing: what the milter path calls when metrics are off."""

    def message(self, outcome: Outcome) -> None:
        """Count one decided message and observe its stage timings."""

    def rcpt_reject(self, decision: RecipientDecision) -> None:
        """Count one recipient refused at RCPT."""

    def incident(self, kind: str, started: bool) -> None:
        """A dependency failed (``started``: it was working until now)."""

    def recovered(self, kind: str) -> None:
        """A failing dependency works again."""


NULL = Recorder()


class PromRecorder(Recorder):
    """Counts into prometheus_client metrics (multiprocess files when the folder is set).

    The metrics join no registry: the metrics process reads every worker's files.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram
        self.messages = Counter("stronghold_messages", "Messages decided, by verdict and action",
                                ["verdict", "action"], registry=None)
        self.recipients = Counter("stronghold_recipients", "Recipients decided, by verdict, action "
                                  "and stage (rcpt: refused at RCPT; eom: at end of message)",
                                  ["verdict", "action", "stage"], registry=None)
        self.stage = Histogram("stronghold_stage_seconds", "Time per message in each stage",
                               ["stage"], buckets=BUCKETS, registry=None)
        self.failures = Counter("stronghold_dependency_failures", "Failed calls to a dependency "
                                "(clamd, database, model, ...)", ["dependency"], registry=None)
        self.incidents = Counter("stronghold_incidents", "Times a dependency started failing",
                                 ["dependency"], registry=None)
        self.failing = Gauge("stronghold_dependency_failing", "1 while a worker sees the dependency failing",
                             ["dependency"], multiprocess_mode="livemax", registry=None)
        self._stage = {name: self.stage.labels(name) for name in STAGES}
        self._messages: dict[tuple[str, str], Any] = {}
        self._recipients: dict[tuple[str, str, str], Any] = {}

    def message(self, outcome: Outcome) -> None:
        v = outcome.verdict
        key = (v.category.value, v.action.value)
        child = self._messages.get(key)
        if child is None:
            child = self._messages[key] = self.messages.labels(*key)
        child.inc()
        for d in v.decisions:
            self._recipient(d.category.value, d.action.value, "eom")
        for name, seconds in outcome.stages.items():
            hist = self._stage.get(name)
            if hist is not None:
                hist.observe(seconds)

    def _recipient(self, verdict: str, action: str, stage: str) -> None:
        key = (verdict, action, stage)
        child = self._recipients.get(key)
        if child is None:
            child = self._recipients[key] = self.recipients.labels(*key)
        child.inc()

    def rcpt_reject(self, decision: RecipientDecision) -> None:
        self._recipient(decision.category.value, decision.action.value, "rcpt")

    def incident(self, kind: str, started: bool) -> None:
        self.failures.labels(kind).inc()
        if started:
            self.incidents.labels(kind).inc()
            self.failing.labels(kind).set(1)

    def recovered(self, kind: str) -> None:
        self.failing.labels(kind).set(0)


def multiprocess_dir(cfg: Config) -> Path:
    return cfg.data_dir / "metrics"


def enable(cfg: Config) -> Recorder:
    """Before the workers fork: a fresh multiprocess folder and the recorder they count into.

    prometheus_client chooses file-backed values from PROMETHEUS_MULTIPROC_DIR
    when a metric is made, so the variable is set before any is.
    """
    if not cfg.metrics_bind:
        return NULL
    folder = multiprocess_dir(cfg)
    shutil.rmtree(folder, ignore_errors=True)  # counts of a previous run would be summed in
    folder.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import values
    values.ValueClass = values.get_value_class()
    return PromRecorder()


def worker_died(cfg: Config, pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay: they happened)."""
    if cfg.metrics_bind:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid, str(multiprocess_dir(cfg)))


class StateCollector:
    """What a scrape reads from the model's passport and the database."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        info = GaugeMetricFamily("stronghold_model_info", "The model file's identity", labels=["model", "created"])
        age = GaugeMetricFamily("stronghold_model_age_seconds", "Seconds since the model was trained")
        try:
            passport = read_passport(self.cfg.model_path)
        except ModelError as exc:
            log.warning("metrics: %s", exc)
        else:
            info.add_metric([model_id(passport), _iso(passport.created)], 1)
            age.add_metric([], max(time.time() - passport.created, 0.0))
        yield info
        yield age
        up = GaugeMetricFamily("stronghold_database_up", "1 when the scrape could read the database")
        try:
            lists, held, marks = self._read_store()
        except StoreError as exc:
            log.warning("metrics: database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        sizes = GaugeMetricFamily("stronghold_list_entries", "Allow/block list entries",
                                  labels=["kind", "scope"])
        for (kind, scope), n in sorted(lists.items()):
            sizes.add_metric([kind, scope], n)
        yield sizes
        yield GaugeMetricFamily("stronghold_quarantine_items", "Held copies not yet released", value=held)
        yield from feedback_families(marks)

    def _read_store(self) -> tuple[dict[tuple[str, str], int], int, list[tuple[str, bool, float]]]:
        from stronghold.store import entries, messagelog, quarantine
        with self.store.session() as s:
            return entries.sizes(s), quarantine.count_unreleased(s), messagelog.feedback_marks(s)


def feedback_families(marks: Iterable[tuple[str, bool, float]]) -> Iterator[Any]:
    """Users' marks against what the filter decided: all marks by (mark, decided),
    false negatives (marked spam, passed as clean or allowed) and false positives
    (marked not spam, judged spam); also the last day's, as gauges."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    all_marks = CounterMetricFamily("stronghold_feedback_marks", "Users' spam / not-spam marks by what the "
                                    "filter decided (marks in the message log)", labels=["mark", "decided"])
    fn = CounterMetricFamily("stronghold_feedback_false_negatives", "Marked spam by a user, passed by the filter")
    fp = CounterMetricFamily("stronghold_feedback_false_positives",
                             "Marked not spam by a user, judged spam by the filter")
    day = time.time() - 86400
    counts: dict[tuple[str, str], int] = {}
    totals = {"fn": 0, "fp": 0, "fn_day": 0, "fp_day": 0}
    for decided, is_spam, created in marks:
        key = ("spam" if is_spam else "not_spam", decided)
        counts[key] = counts.get(key, 0) + 1
        kind = "fn" if is_spam and decided in SAID_HAM else "fp" if not is_spam and decided in SAID_SPAM else ""
        if kind:
            totals[kind] += 1
            if created >= day:
                totals[kind + "_day"] += 1
    for key, n in sorted(counts.items()):
        all_marks.add_metric(list(key), n)
    fn.add_metric([], totals["fn"])
    fp.add_metric([], totals["fp"])
    yield all_marks
    yield fn
    yield fp
    yield GaugeMetricFamily("stronghold_feedback_false_negatives_last_day",
                            "False negatives marked in the last 24 hours", value=totals["fn_day"])
    yield GaugeMetricFamily("stronghold_feedback_false_positives_last_day",
                            "False positives marked in the last 24 hours", value=totals["fp_day"])


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def serve(cfg: Config) -> None:
    """The metrics process: serve /metrics on ``metrics_bind`` until a signal ends it (never returns
    unless the port cannot be bound: OSError)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from stronghold.store.db import Store
    host, _, port = cfg.metrics_bind.rpartition(":")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(multiprocess_dir(cfg)))
    store = Store(cfg.db_url)
    registry.register(StateCollector(cfg, store))
    start_http_server(int(port), host.strip("[]"), registry)
    log.info("metrics on http://%s/metrics", cfg.metrics_bind)
    while True:  # the HTTP server runs in a thread; SIGTERM ends the process
        signal.pause()
