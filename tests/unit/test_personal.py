"""Personal layers: one user's feedback moves that user's scores, per recipient, and nobody else's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stronghold import config as config_mod
from stronghold.classifier import Model
from stronghold.cli import main
from stronghold.message import parse
from stronghold.personal import Layer, load_layers, rebuild
from stronghold.received import as_received
from stronghold.service import Service
from stronghold.store import accounts, layers
from stronghold.store.db import Store
from stronghold.training import tokenize
from stronghold.verdict import Action, Envelope
from tests.conftest import corpus_files

pytestmark = pytest.mark.corpus


def _newsletters(corpus: Path, part: str) -> list[Path]:
    return [p for p in corpus_files(corpus, "ham", part) if "hard-ham" in str(p)]


def test_a_layer_changes_only_the_tokens_it_learned(models_dir: Path, corpus: Path) -> None:
    shared = Model.load(models_dir / "model.joblib", for_learning=True)
    layer = Layer.build(shared, [tokenize(p.read_bytes()) for p in _newsletters(corpus, "train")[:40]], [True] * 40)
    newsletters = [tokenize(p.read_bytes()) for p in _newsletters(corpus, "test")]
    moved = [shared.score(t, layer=layer).probability - shared.score(t).probability for t in newsletters]
    assert sum(m > 0 for m in moved) > 0.8 * len(moved)  # newsletters look more like spam to this user
    unrelated = {"zzqx-token-never-seen", "subject:qqqzzz"}
    assert shared.score(unrelated, layer=layer) == shared.score(unrelated)  # exactly the shared score


def test_the_milter_decides_per_recipient_with_their_own_layer(models_dir: Path, corpus: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    for key, value in {"STRONGHOLD_DATA_DIR": str(tmp_path / "data"), "STRONGHOLD_MODELS_DIR": str(models),
                       "STRONGHOLD_CLAMD_SOCKET": "none", "PW": "a long enough password"}.items():
        monkeypatch.setenv(key, value)
    for login in ("anna", "bert"):
        assert main(["user", "add", login, "--password-env", "PW", "--address", f"{login}@example.com"]) == 0
    folder = tmp_path / "unwanted"
    folder.mkdir()
    for i, path in enumerate(_newsletters(corpus, "train")[:60]):
        (folder / f"{i}.eml").write_bytes(path.read_bytes())
    assert main(["learn", "--personal", "bert", "--spam", str(folder), "--no-promote"]) == 0
    assert "personal layers: 1 rebuilt" in capsys.readouterr().out

    service = Service(config_mod.load(None))
    try:
        differ = 0
        for path in _newsletters(corpus, "test"):
            msg = parse(as_received(path.read_bytes()))
            verdict = service.decide(Envelope("news@example.org", ("anna@example.com", "bert@example.com")),
                                     msg, None).verdict
            anna, bert = verdict.decisions
            assert anna.action == Action.ACCEPT and not any(s.step == "personal" for s in anna.trace)
            assert any(s.step == "personal" for s in bert.trace)
            differ += bert.action != Action.ACCEPT
        assert differ >= 5  # some of the newsletters anna gets are spam for bert
    finally:
        service.store.dispose()


@pytest.mark.parametrize("first", ["address", "login"])
def test_an_owners_own_layer_wins_over_the_layer_of_their_address(store: Store, first: str) -> None:
    """IMAP moves of c@example.com, before any user owned it, built a layer named by the address;
    carol, given the address since, built her own.  Both applied to c@example.com and the one the
    store happened to list last won (rebuilding either could swap them); her own layer wins now."""
    address_layer = Layer(np.array([7], dtype=np.int64), np.array([3.0], dtype=np.float32))
    carols = Layer(np.array([7], dtype=np.int64), np.array([-3.0], dtype=np.float32))
    built = {"c@example.com": (1, address_layer.pack()), "carol": (1, carols.pack())}
    with store.session() as s:
        accounts.assign_address(s, accounts.add_user(s, "carol", "a long enough passphrase"), "c@example.com")
        for scope in sorted(built, reverse=first == "login"):  # stored in this order
            layers.replace(s, {scope: built[scope]})
    got = load_layers(store)
    assert got.keys() == {"c@example.com"}
    assert got["c@example.com"].values.tolist() == [-3.0]


def test_a_deleted_users_layer_does_not_pass_to_the_next_user_of_that_login(
        models_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Layers are stored under the login: deleting bert must take his, or a new 'bert' (another
    person) gets his mail scored by what the old one marked, even after the next rebuild."""
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    for key, value in {"STRONGHOLD_DATA_DIR": str(tmp_path / "data"), "STRONGHOLD_MODELS_DIR": str(models),
                       "STRONGHOLD_CLAMD_SOCKET": "none", "PW": "a long enough password"}.items():
        monkeypatch.setenv(key, value)
    assert main(["user", "add", "bert", "--password-env", "PW", "--address", "bert@example.com"]) == 0
    folder = tmp_path / "unwanted"
    folder.mkdir()
    for i, path in enumerate(_newsletters(corpus, "train")[:60]):
        (folder / f"{i}.eml").write_bytes(path.read_bytes())
    assert main(["learn", "--personal", "bert", "--spam", str(folder), "--no-promote"]) == 0
    assert main(["user", "rm", "bert"]) == 0
    assert main(["user", "add", "bert", "--password-env", "PW", "--address", "bert@example.com"]) == 0
    capsys.readouterr()

    service = Service(config_mod.load(None))
    try:
        rebuild(service.store, Model.load(models / "model.joblib", for_learning=True))  # as 'jobs' does
        for path in _newsletters(corpus, "test")[:20]:
            verdict = service.decide(Envelope("news@example.org", ("bert@example.com",)),
                                     parse(as_received(path.read_bytes())), None).verdict
            assert not any(s.step == "personal" for s in verdict.decisions[0].trace)
    finally:
        service.store.dispose()
