"""Dependencies failing under real Postfix: nothing is lost.

An "edge" Postfix plays the sending server: it relays to the filtering Postfix
(with the milter), so a 4xx from the filter leaves the message in the edge's
queue to be retried, as on the internet.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import TEST_SIGNATURES, Clamd, Postfix, free_port, wait_for
from stronghold.store import messagelog
from tests.conftest import Stack, shared_tmpdir
from tests.e2e import mail
from tests.harness.postgres import PostgresCluster

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stack's model is trained on the corpus


class EdgeStack:
    def __init__(self, home: Path, models_dir: Path, database_url: str = "", **settings: object) -> None:
        self.clamd = Clamd(home / "clamd", TEST_SIGNATURES)
        self.clamd.start()
        models = home / "models"  # a copy: some tests replace the model
        shutil.copytree(models_dir, models)
        self.filter = Stack(home / "filter", models, self.clamd.address,
                            database_url or f"sqlite:///{home / 'store.db'}", **settings)
        self.filter.start()
        self.edge = Postfix(home / "edge", free_port(), relay=f"127.0.0.1:{self.filter.postfix.port}")
        self.edge.start()

    def stop(self) -> None:
        self.edge.stop()
        self.filter.stop()
        self.clamd.stop()


@pytest.fixture
def edge_stack(models_dir: Path) -> Iterator[EdgeStack]:
    home = shared_tmpdir("stronghold-faults-")
    (home / "filter").mkdir()
    s = EdgeStack(home, models_dir)
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def _deferred_with(edge: Postfix, text: str) -> bool:
    return any(text in str(r.get("delay_reason", "")) for m in edge.queue() for r in m["recipients"])


def test_clamd_down_tempfails_then_delivers_once_back(edge_stack: EdgeStack) -> None:
    edge_stack.clamd.stop()
    ids = []
    for _ in range(3):
        tid, data = mail.simple()
        assert mail.send(edge_stack.edge.port, "carol@sender.example", ["mia@example.com"], data) == {}
        ids.append(tid)
    wait_for(lambda: len(edge_stack.edge.queue()) == 3 and _deferred_with(edge_stack.edge, "4.7.1"),
             30, "three messages deferred with 4.7.1 in the edge queue")
    sink = edge_stack.filter.sink
    assert not sink.messages
    log = edge_stack.filter.milter.log()
    workers = 2
    assert 1 <= log.count("clamd failing") <= workers  # once per incident per worker, not per message
    edge_stack.clamd.start()
    edge_stack.edge.flush()
    for tid in ids:
        assert sink.wait_for(lambda m, t=tid: f"X-Test-Id: {t}".encode() in m.data, timeout=30)
    wait_for(lambda: not edge_stack.edge.queue(), 30, "edge queue empty")
    delivered = [m for m in sink.messages if any(f"X-Test-Id: {t}".encode() in m.data for t in ids)]
    assert len(delivered) == 3  # each exactly once


def test_milter_killed_postfix_tempfails_and_nothing_is_lost(edge_stack: EdgeStack) -> None:
    edge_stack.filter.milter.kill()
    tid, data = mail.simple()
    assert mail.send(edge_stack.edge.port, "carol@sender.example", ["ned@example.com"], data) == {}
    wait_for(lambda: _deferred_with(edge_stack.edge, "4."), 30, "message deferred in the edge queue")
    assert not edge_stack.filter.sink.messages
    edge_stack.filter.milter.start()
    edge_stack.edge.flush()
    got = edge_stack.filter.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data, timeout=30)
    assert len(got) == 1
    wait_for(lambda: not edge_stack.edge.queue(), 30, "edge queue empty")


@pytest.mark.parametrize("engine", ["native", "libmilter"])
def test_spool_folder_failing_tempfails_at_once_then_delivers_once(models_dir: Path, engine: str) -> None:
    """data_dir (where a message past spool_memory_bytes is spooled) gone mid-run: each message
    that needs it is tempfailed at its end with a log line saying why, and delivered once the
    folder is back.  With libmilter the spool's OSError, raised in the body callback (which
    Postfix does not wait an answer for), got no answer at all: Postfix waited its
    milter_content_timeout (120 s here, 5 minutes by default) on every attempt."""
    home = shared_tmpdir("stronghold-spoolfault-")
    (home / "filter").mkdir()
    spool_dir = home / "filter" / "data"
    s = EdgeStack(home, models_dir, milter_engine=engine, data_dir=str(spool_dir), spool_memory_bytes=100_000)
    try:
        s.filter.milter.wait_log(f"{engine} protocol engine")
        shutil.rmtree(spool_dir)
        tid, data = mail.simple(body="The quarterly figures are below.\n" + "0123456789 abcdefgh\n" * 20_000)
        assert mail.send(s.edge.port, "carol@sender.example", ["pat@example.com"], data) == {}
        wait_for(lambda: _deferred_with(s.edge, "4.7.1"), 30, "message deferred with 4.7.1 in the edge queue")
        assert not s.filter.sink.messages
        s.filter.milter.wait_log('to=<pat@example.com> action=tempfail reasons="spool failed: ')
        spool_dir.mkdir()
        s.edge.flush()
        got = s.filter.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data, timeout=30)
        assert len(got) == 1
        wait_for(lambda: not s.edge.queue(), 30, "edge queue empty")
    finally:
        s.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_edge_stack(models_dir: Path) -> Iterator[tuple[EdgeStack, PostgresCluster]]:
    cluster = PostgresCluster()
    cluster.start()
    url = cluster.create_database("milter")
    home = shared_tmpdir("stronghold-pgfault-")
    (home / "filter").mkdir()
    s = EdgeStack(home, models_dir, database_url=url)
    yield s, cluster
    s.stop()
    cluster.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.postgres
def test_database_down_tempfails_then_recovers_without_restart(pg_edge_stack) -> None:
    stack, cluster = pg_edge_stack
    tid, data = mail.simple()
    assert mail.send(stack.edge.port, "carol@sender.example", ["oli@example.com"], data) == {}
    assert stack.filter.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data)
    cluster.stop_server()
    tid, data = mail.simple()
    assert mail.send(stack.edge.port, "carol@sender.example", ["oli@example.com"], data) == {}
    wait_for(lambda: _deferred_with(stack.edge, "4.7.1"), 60, "message deferred while the database is down")
    assert not stack.filter.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data, timeout=0.5)
    cluster.start_server()
    stack.edge.flush()
    assert stack.filter.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data, timeout=60)
    wait_for(lambda: not stack.edge.queue(), 30, "edge queue empty")
    assert "database failing" in stack.filter.milter.log()


def test_sqlite_locked_by_another_process_delays_log_rows_not_mail(edge_stack: EdgeStack) -> None:
    """WAL: readers (lists) go on while another process holds the write lock;
    message-log rows wait in the worker's queue and are written once it lets go."""
    import sqlite3

    from stronghold.store import messagelog
    stack = edge_stack.filter
    path = stack.db_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    ids = []
    try:
        for i in range(4):
            tid, data = mail.simple(subject=f"while locked {i}")
            assert mail.send(edge_stack.edge.port, "carol@sender.example", ["uma@example.com"], data) == {}
            ids.append(tid)
        for tid in ids:  # delivered at once, not tempfailed
            assert stack.sink.wait_for(lambda m, t=tid: f"X-Test-Id: {t}".encode() in m.data, timeout=30)
        stack.milter.wait_log("message log failing", timeout=30)
        with stack.store.session() as s:
            assert not messagelog.recent(s, messagelog.LogFilter(addresses=("uma@example.com",)))
    finally:
        locker.execute("COMMIT")
        locker.close()

    def rows() -> int:
        with stack.store.session() as s:
            return len(messagelog.recent(s, messagelog.LogFilter(addresses=("uma@example.com",))))
    wait_for(lambda: rows() == len(ids), 30, "the queued log rows written after the lock is released")
    stack.milter.wait_log("message log recovered")
    assert not edge_stack.edge.queue()


def test_model_replaced_mid_run_is_picked_up_safely(edge_stack: EdgeStack, models_dir: Path) -> None:
    """Models are swapped (atomically) and garbage is written while mail flows: no tempfail, no loss."""
    from stronghold.classifier import Model
    live = Path(edge_stack.filter.milter.settings["models_dir"]) / "model.joblib"
    model = Model.load(live, for_learning=True)
    sent = []
    for round_ in range(6):
        for _ in range(5):
            tid, data = mail.simple(subject=f"round {round_}")
            assert mail.send(edge_stack.filter.postfix.port, "carol@sender.example", ["pat@example.com"], data) == {}
            sent.append(tid)
        if round_ % 2 == 0:
            model.passport.spam_threshold = 0.98 + round_ / 1000
            model.save(live)  # atomic replace
        else:
            live.with_suffix(".npy").write_bytes(b"\x93NUMPY half-written")  # a broken copy in place

            def noticed() -> bool:  # the milter looks at the files when mail comes
                tid, data = mail.simple(subject="while broken")
                assert mail.send(edge_stack.filter.postfix.port, "carol@sender.example", ["pat@example.com"],
                                 data) == {}
                sent.append(tid)
                return "does not match its passport" in edge_stack.filter.milter.log()
            wait_for(noticed, 30, "the milter noticing the broken table")
            model.save(live)  # then repaired
    model.passport.spam_threshold = 0.9871
    model.save(live)

    def new_threshold_in_use() -> bool:
        tid, data = mail.simple(subject="after the swap")
        assert mail.send(edge_stack.filter.postfix.port, "carol@sender.example", ["pat@example.com"], data) == {}
        sent.append(tid)
        got = edge_stack.filter.sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data)
        return "threshold=0.9871" in mail.headers(got[0].data)["X-Spam-Status"]
    wait_for(new_threshold_in_use, 30, "the new model in use")
    for tid in sent:  # every message delivered: none tempfailed, none scored by a broken table
        assert edge_stack.filter.sink.wait_for(lambda m, t=tid: f"X-Test-Id: {t}".encode() in m.data, timeout=20)
    assert "classifier=error" not in edge_stack.filter.milter.log()


def test_sighup_makes_workers_reload_the_model(edge_stack: EdgeStack) -> None:
    import signal
    milter = edge_stack.filter.milter
    _tid, data = mail.simple(subject="before the signal")
    assert mail.send(edge_stack.filter.postfix.port, "carol@sender.example", ["ruth@example.com"], data) == {}
    before = milter.log().count("model loaded")
    milter.proc.send_signal(signal.SIGHUP)
    milter.wait_log("SIGHUP: workers will reload the model")

    def reloaded() -> bool:  # workers look again on their next message
        _tid, data = mail.simple(subject="after the signal")
        assert mail.send(edge_stack.filter.postfix.port, "carol@sender.example", ["ruth@example.com"], data) == {}
        return milter.log().count("model loaded") > before
    wait_for(reloaded, 30, "a worker reloading the model after SIGHUP")
    assert milter.proc.poll() is None


def _listener_flags(pid: int, path: str) -> int:
    """The open-file flags of ``pid``'s descriptor for the unix socket listening at ``path``."""
    with open("/proc/net/unix") as table:
        inodes = {f[6] for f in (line.split() for line in table) if len(f) > 7 and f[7] == path}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:[") and target[8:-1] in inodes:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                return int(next(ln for ln in info if ln.startswith("flags:")).split()[1], 8)
    raise AssertionError(f"process {pid} has no descriptor for {path}")


@pytest.mark.parametrize("engine", ["native", "libmilter"])
def test_sigterm_stops_every_worker_promptly_with_its_log_rows_written(models_dir: Path, engine: str) -> None:
    """Workers share one listening socket, non-blocking for both engines: one that lost the
    race for the last connection must go back to waiting (and see SIGTERM), not block in
    accept().  libmilter polls it every 5 s; the native engine waits in epoll on it and on
    the signal wake-up pipe, so its workers stop at once (its poll's safety net is 5 s)."""
    home = shared_tmpdir("stronghold-faults-")
    (home / "filter").mkdir()
    edge_stack = EdgeStack(home, models_dir, milter_engine=engine)
    try:
        _stop_with_rows_written(edge_stack.filter, engine)
    finally:
        edge_stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def _stop_with_rows_written(stack: Stack, engine: str) -> None:
    assert stack.milter.proc is not None
    assert f"{engine} protocol engine" in stack.milter.log()
    flags = _listener_flags(stack.milter.proc.pid, stack.milter.spec[5:])
    assert flags & os.O_NONBLOCK
    ids = []
    for i in range(3):
        tid, data = mail.simple(subject=f"before stop {i}")
        assert mail.send(stack.postfix.port, "carol@sender.example", ["quinn@example.com"], data) == {}
        ids.append(tid)
    for tid in ids:
        assert stack.sink.wait_for(lambda m, t=tid: f"X-Test-Id: {t}".encode() in m.data, timeout=30)
    stack.postfix.stop()
    began = time.monotonic()
    stack.milter.stop(grace=10)  # raises if SIGTERM was not enough
    if engine == "native":  # woken by the signal, not by its 5 s safety net
        assert time.monotonic() - began < 3
    assert len(re.findall(r"worker \d+ stopped", stack.milter.log())) == 2  # both workers, cleanly
    with stack.store.session() as s:
        rows = messagelog.recent(s, messagelog.LogFilter(addresses=("quinn@example.com",)))
    assert len(rows) == len(ids)  # queued log writes drained before exit
