"""The held-back sample belongs to the model it was drawn for: a side model trained into the same
folder keeps its own, an interrupted `train` is caught rather than judged on the wrong sample, and
a folder-wide sample of an older install is still read."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from stronghold import heldback
from stronghold.cli import main
from stronghold.modelfile import ModelError, read_passport
from tests.conftest import corpus_files
from tests.unit import test_learning

pytestmark = pytest.mark.corpus
env, base = test_learning.env, test_learning.base  # a models folder, a small corpus (200 ham, 100 spam)


@pytest.fixture(scope="module")
def small(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Another, smaller training set: --ham FOLDER --spam FOLDER arguments."""
    home = tmp_path_factory.mktemp("small")
    for label, n in (("ham", 30), ("spam", 20)):
        (home / label).mkdir()
        for i, path in enumerate(corpus_files(corpus, label, "test")[-n:]):
            (home / label / f"{i}.eml").write_bytes(path.read_bytes())
    return ["--ham", str(home / "ham"), "--spam", str(home / "spam")]


def test_a_side_model_in_the_same_folder_keeps_its_own_sample(
        base: tuple[Path, Path], small: list[str], corpus: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = test_learning._train(base, env / "models")
    other = env / "models" / "other.joblib"
    assert main(["train", *small, "--model", str(other)]) == 0
    assert [len(heldback.read(m)[1]) for m in (live, other)] == [300, 50]
    capsys.readouterr()
    assert main(["learn", "--spam", str(corpus_files(corpus, "spam", "test")[0])]) == 0
    got = capsys.readouterr()
    assert "/200, FN " in got.out + got.err and "/100" in got.out + got.err  # judged on the live model's sample


def test_a_sample_of_another_training_run_is_refused(
        base: tuple[Path, Path], small: list[str], corpus: Path, env: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C after the new model is saved but before its sample is in place."""
    live = test_learning._train(base, env / "models")

    def interrupted(model: Path, tmp: Path) -> Path:
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(heldback, "commit", interrupted)
        assert main(["train", *small]) == 130
    assert read_passport(live).trained_ham == 30  # the new model, beside the old sample
    assert not [p.name for p in live.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ModelError, match="drawn for another training run"):
        heldback.read(live)
    capsys.readouterr()
    assert main(["learn", "--spam", str(corpus_files(corpus, "spam", "test")[0])]) == 2
    assert "drawn for another training run" in capsys.readouterr().err
    assert main(["train", *small]) == 0  # trained again: the pair is whole
    assert len(heldback.read(live)[1]) == 50


def test_an_older_installs_folder_sample_is_read_and_a_missing_one_named(
        base: tuple[Path, Path], env: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = test_learning._train(base, env / "models")
    sets, labels = heldback.read(live)
    heldback.path_for(live).unlink()
    legacy = live.with_name("heldback.json.gz")
    with gzip.open(legacy, "wt", encoding="utf-8") as fh:  # as written before: no training run recorded
        json.dump({"labels": labels, "tokens": [sorted(t) for t in sets]}, fh)
    with caplog.at_level(logging.WARNING, logger="stronghold.heldback"):
        assert heldback.read(live) == (sets, labels)
    assert "folder-wide sample" in caplog.text
    legacy.unlink()
    with pytest.raises(ModelError, match=r"has no held-back sample \(model.heldback.json.gz\)"):
        heldback.read(live)
