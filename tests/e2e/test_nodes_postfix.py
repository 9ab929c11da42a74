"""Two mail nodes (Postfix + milter, each its own data_dir) on one PostgreSQL: what one node holds,
the other releases, once, through its own Postfix; two nodes releasing at once deliver each copy once.

Each node's Postfix relays to a sink of its own, so a delivery shows which Postfix carried it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import Clamd, wait_for
from stronghold.store import quarantine
from tests.conftest import Stack, shared_tmpdir
from tests.e2e import mail
from tests.harness.milterproc import write_config
from tests.harness.postgres import PostgresCluster

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.postgres, pytest.mark.corpus]


@pytest.fixture(scope="module")
def two_nodes(models_dir: Path, clamd: Clamd, postgres: PostgresCluster) -> Iterator[tuple[Stack, Stack]]:
    home = shared_tmpdir("stronghold-twonodes-")
    url = postgres.create_database(f"twonodes_{os.getpid()}")
    nodes = tuple(Stack(home / name, models_dir, clamd.address, url, virus_action="quarantine").start()
                  for name in ("a", "b"))
    yield nodes  # type: ignore[misc]
    for node in nodes:
        node.stop()
    shutil.rmtree(home, ignore_errors=True)


def _cli(node: Stack, *args: str) -> subprocess.Popen[str]:
    """``stronghold --config <node's settings> ARGS`` started in a process of its own."""
    config = write_config(node.home / "cli.toml", {
        "database_url": node.db_url, "data_dir": str(node.home / "milter"), "models_dir": str(node.home / "models"),
        "release_smtp": f"127.0.0.1:{node.postfix.release_port}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGHOLD_")}
    return subprocess.Popen([sys.executable, "-m", "stronghold.cli", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def _copies(node: Stack, marker: bytes) -> int:
    return sum(1 for m in node.sink.messages if marker in m.data)


def _flush(node: Stack) -> None:
    """Wait until what went into ``node``'s release listener before now has reached its sink."""
    tid, data = mail.simple(subject="flush marker")
    assert mail.send(node.postfix.release_port, "flush@sender.example", ["flush@example.com"], data) == {}
    assert node.sink.wait_for(lambda m: tid.encode() in m.data, 30)


def test_held_on_one_node_released_from_the_other_without_its_data_dir(two_nodes: tuple[Stack, Stack]) -> None:
    node_a, node_b = two_nodes
    tid, data = mail.with_eicar(sender="carol@sender.example")
    assert mail.send(node_a.postfix.port, "carol@sender.example", ["v1@example.com"], data) == {}
    wait_for(lambda: "milter-discard" in node_a.postfix.log(), 20, "node A holding the virus")
    with node_b.store.session() as s:
        [held] = [h for h in quarantine.find(s, recipients=["v1@example.com"])
                  if tid.encode() in quarantine.content(s, h.id)]
    node_a.milter.stop()  # node A is gone, its data_dir with it: the copy is in the database
    shutil.rmtree(node_a.home / "milter")
    code, out, err = _finish(_cli(node_b, "quarantine", "release", str(held.id), "--by", "admin-on-b"))
    assert (code, out) == (0, f"released {held.id} to v1@example.com\n"), err
    assert node_b.sink.wait_for(lambda m: tid.encode() in m.data, 30)
    code, out, err = _finish(_cli(node_b, "quarantine", "release", str(held.id)))
    assert code == 2 and "already released by admin-on-b" in err
    _flush(node_b)
    _flush(node_a)
    assert (_copies(node_a, tid.encode()), _copies(node_b, tid.encode())) == (0, 1)
    assert node_b.sink.messages[0].recipients == ["v1@example.com"]
    node_a.milter.start()


def test_two_nodes_releasing_the_same_items_at_once_deliver_each_once(two_nodes: tuple[Stack, Stack]) -> None:
    node_a, node_b = two_nodes
    tids, ids = [], []
    for n in range(4):
        tid, raw = mail.simple(sender="shop@store.example", subject=f"Receipt {n}")
        with node_a.store.session() as s:
            ids += quarantine.hold(s, raw, recipients=[f"r{n}@example.com"], sender="shop@store.example",
                                   subject=f"Receipt {n}", queue_id=f"QR{n}", score=0.99, category="spam",
                                   reason="spam", trace="", virus=None)
        tids.append(tid)
    procs = [_cli(node_a, "quarantine", "release", *map(str, ids), "--by", "a"),
             _cli(node_b, "quarantine", "release", *map(str, reversed(ids)), "--by", "b")]
    results = [_finish(p) for p in procs]
    said = [line for _, out, _ in results for line in out.splitlines()]
    assert sorted(said) == sorted(f"released {i} to r{n}@example.com" for n, i in enumerate(ids)), results
    for code, out, err in results:  # the one that lost an item says who took it
        lost = len(ids) - len(out.splitlines())
        assert (code, err.count("was already released by")) == ((2, lost) if lost else (0, 0)), (code, err)
    _flush(node_a)
    _flush(node_b)
    for tid in tids:
        assert _copies(node_a, tid.encode()) + _copies(node_b, tid.encode()) == 1, tid
