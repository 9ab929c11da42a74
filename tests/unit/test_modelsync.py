"""One model for all nodes: published in the store, pulled by each node, versions reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.localstack import wait_for
from stronghold import modelsync
from stronghold.classifier import Model
from stronghold.cli import main
from stronghold.incidents import Incidents
from stronghold.modelfile import table_path
from stronghold.modelholder import ModelHolder
from stronghold.store.db import Store
from stronghold.store.tables import ModelVersion
from tests.harness.milterproc import MilterProcess


def _model(threshold: float) -> Model:
    model = Model.train([{"meeting", "agenda"}] * 4 + [{"free", "money"}] * 4, [False] * 4 + [True] * 4)
    model.passport.spam_threshold = threshold
    return model


@pytest.fixture
def db(store: Store) -> Store:
    """The shared store: SQLite and PostgreSQL (the table bytes are a large binary column)."""
    return store


def test_nodes_pull_the_published_model_and_report_it(tmp_path: Path, db: Store, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    learner = tmp_path / "learner" / "model.joblib"
    _model(0.7).save(learner)
    nodes = {name: tmp_path / name / "model.joblib" for name in ("mx1", "mx2")}
    for path in nodes.values():
        path.parent.mkdir()
    assert modelsync.sync_once(db, nodes["mx1"], "mx1") == ""  # nothing published yet
    first = modelsync.publish(db, learner)
    for name, path in nodes.items():
        assert modelsync.sync_once(db, path, name) == first
        assert not path.exists()  # a node gets the table and passport only: nothing to unpickle
    holder = ModelHolder(nodes["mx1"], Incidents())
    holder.CHECK_SECONDS = 0.0
    assert holder().spam_threshold == 0.7

    _model(0.8).save(learner)
    second = modelsync.publish(db, learner)
    assert second != first and modelsync.sync_once(db, nodes["mx1"], "mx1") == second
    assert holder().spam_threshold == 0.8  # the milter's holder swaps on the passport change

    monkeypatch.setenv("STRONGHOLD_DATABASE_URL", db.url)
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(learner.parent))
    assert main(["model", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["published"] == second
    assert {n["node"]: n["current"] for n in info["nodes"]} == {"mx1": True, "mx2": False}
    assert main(["model", "info"]) == 0
    assert "node mx2: " + first[:12] + " (DIFFERS" in capsys.readouterr().out


def test_a_corrupt_published_model_leaves_the_node_as_it_was(tmp_path: Path, db: Store) -> None:
    learner = tmp_path / "learner" / "model.joblib"
    node = tmp_path / "mx1" / "model.joblib"
    node.parent.mkdir()
    _model(0.7).save(learner)
    first = modelsync.publish(db, learner)
    modelsync.sync_once(db, node, "mx1")
    before = table_path(node).read_bytes()
    _model(0.8).save(learner)
    second = modelsync.publish(db, learner)
    with db.session() as s:
        row = s.get(ModelVersion, second)
        assert row is not None
        row.table = row.table[:-10] + b"0123456789"
    assert modelsync.sync_once(db, node, "mx1") == first
    assert table_path(node).read_bytes() == before
    [reported] = modelsync.nodes(db)
    assert reported.version == first and reported.error


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)  # several nodes share a server database
def test_a_running_milter_pulls_a_new_version_within_seconds(tmp_path: Path, db: Store) -> None:
    learner = tmp_path / "learner" / "model.joblib"
    _model(0.7).save(learner)
    modelsync.publish(db, learner)
    home = tmp_path / "node"
    (home / "models").mkdir(parents=True)
    milter = MilterProcess(home, {"data_dir": str(home / "data"), "models_dir": str(home / "models"),
                                  "milter_socket": f"unix:{home / 'milter.sock'}", "clamd_socket": "none",
                                  "database_url": db.url, "milter_workers": 1, "model_sync_seconds": 0.2,
                                  "node_name": "mx-test"})
    milter.start()
    try:
        _model(0.8).save(learner)
        second = modelsync.publish(db, learner)
        wait_for(lambda: [(n.node, n.version) for n in modelsync.nodes(db)] == [("mx-test", second)], 15,
                 "the node reporting the new version")
        assert Model.load(home / "models" / "model.joblib").spam_threshold == 0.8
    finally:
        milter.stop()


def test_publish_refuses_a_missing_or_broken_model_in_one_line(tmp_path: Path, db: Store,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`model publish` before any `train`, or of a model missing its table: exit 2, one line, nothing published."""
    learner = tmp_path / "learner" / "model.joblib"
    learner.parent.mkdir()
    monkeypatch.setenv("STRONGHOLD_DATABASE_URL", db.url)
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(learner.parent))
    assert main(["model", "publish"]) == 2
    err = capsys.readouterr().err
    assert "no model at" in err and "Traceback" not in err
    _model(0.7).save(learner)
    table_path(learner).unlink()
    assert main(["model", "publish"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "not published" in err and "Traceback" not in err
    assert modelsync.active_version(db) is None
