"""Training, scoring, learning and the safety of model files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stronghold.chisquare import log_chi2_tails
from stronghold.classifier import Model, feature_matrix, token_indices
from stronghold.modelfile import ModelError, passport_path


def _sets() -> tuple[list[set[str]], list[bool]]:
    ham = [{"meeting", "agenda", f"h{i}", "subject:minutes"} for i in range(30)]
    spam = [{"viagra", "free", f"s{i}", "subject:winner"} for i in range(30)]
    return ham + spam, [False] * 30 + [True] * 30


def test_scores_separate_and_reasons_name_tokens() -> None:
    sets, labels = _sets()
    model = Model.train(sets, labels)
    spam = model.score({"viagra", "free", "unknown-token"})
    ham = model.score({"meeting", "agenda"})
    assert spam.probability > 0.9 > 0.1 > ham.probability
    assert {c.token for c in spam.clues} == {"viagra", "free"}
    assert model.score(set()).probability == pytest.approx(0.5)


def test_one_class_is_refused() -> None:
    with pytest.raises(ModelError, match="both ham and spam"):
        Model.train([{"a"}, {"b"}], [True, True])


def test_learn_moves_the_score() -> None:
    sets, labels = _sets()
    model = Model.train(sets, labels)
    before = model.score({"newword"}).probability
    model.learn([{"newword", "x"}] * 5, [True] * 5)
    assert model.score({"newword"}).probability > before
    assert model.passport.learned_spam == 5


def test_save_load_roundtrip(tmp_path: Path) -> None:
    sets, labels = _sets()
    model = Model.train(sets, labels)
    model.save(tmp_path / "m.joblib")
    loaded = Model.load(tmp_path / "m.joblib")
    assert loaded.nb is None  # scoring only
    assert Model.load(tmp_path / "m.joblib", for_learning=True).nb is not None
    assert loaded.score({"viagra"}).probability == pytest.approx(model.score({"viagra"}).probability)
    assert loaded.passport.trained_spam == 30
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model at"):
        Model.load(tmp_path / "none.joblib")


@pytest.mark.parametrize("suffix", [".joblib", ".npy"])
def test_corrupt_files_are_refused_before_reading(tmp_path: Path, suffix: str) -> None:
    sets, labels = _sets()
    Model.train(sets, labels).save(tmp_path / "m.joblib")
    with open((tmp_path / "m.joblib").with_suffix(suffix), "r+b") as fh:
        fh.seek(200)
        fh.write(b"garbage!")
    with pytest.raises(ModelError, match="does not match its passport"):
        Model.load(tmp_path / "m.joblib", for_learning=suffix == ".joblib")


@pytest.mark.parametrize("suffix", [".joblib", ".npy"])
def test_a_missing_file_of_a_model_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    sets, labels = _sets()
    Model.train(sets, labels).save(tmp_path / "m.joblib")
    (tmp_path / "m.joblib").with_suffix(suffix).unlink()
    with pytest.raises(ModelError, match="is missing; retrain"):
        Model.load(tmp_path / "m.joblib", for_learning=suffix == ".joblib")


@pytest.mark.parametrize("suffix", [".joblib", ".npy"])
def test_files_writable_by_others_are_refused(tmp_path: Path, suffix: str) -> None:
    sets, labels = _sets()
    Model.train(sets, labels).save(tmp_path / "m.joblib")
    os.chmod((tmp_path / "m.joblib").with_suffix(suffix), 0o666)
    with pytest.raises(ModelError, match="writable by other users"):
        Model.load(tmp_path / "m.joblib", for_learning=suffix == ".joblib")


def test_incompatible_versions_are_refused(tmp_path: Path) -> None:
    sets, labels = _sets()
    Model.train(sets, labels).save(tmp_path / "m.joblib")
    side = passport_path(tmp_path / "m.joblib")
    data = json.loads(side.read_text())
    data["versions"]["scikit-learn"] = "0.1.0"
    side.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="retrain"):
        Model.load(tmp_path / "m.joblib", for_learning=True)
    Model.load(tmp_path / "m.joblib")  # the table has no pickle: scoring still works
    data["format_version"] = 99
    side.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="format 99"):
        Model.load(tmp_path / "m.joblib")


def test_model_from_an_older_tokenizer_is_used_with_a_warning(tmp_path: Path, caplog) -> None:
    from stronghold.tokens import TOKENIZER_VERSION
    sets, labels = _sets()
    Model.train(sets, labels).save(tmp_path / "m.joblib")
    side = passport_path(tmp_path / "m.joblib")
    data = json.loads(side.read_text())
    assert data["tokenizer"] == TOKENIZER_VERSION
    del data["tokenizer"]  # as written before the field existed: version 1
    side.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="stronghold.modelfile"):
        model = Model.load(tmp_path / "m.joblib")
    assert model.score({"viagra", "free"}).probability > 0.5
    assert "trained with tokenizer 1" in caplog.text and "retrain" in caplog.text


def test_hashing_matches_scikit_learns_feature_hasher() -> None:
    tokens = ["hello", "subject:free", "x" * 300, "ü", "日本語", "url:example.com", "skip:a 50"]
    matrix = feature_matrix([[t] for t in tokens])
    assert list(matrix.indices) == list(token_indices(tokens))


def test_scoring_never_imports_scikit_learn_or_unpickles(tmp_path: Path) -> None:
    sets, labels = _sets()
    Model.train(sets, labels).save(tmp_path / "m.joblib")
    code = ("import sys; from stronghold.classifier import Model; import stronghold.milter; "
            f"m = Model.load({str(tmp_path / 'm.joblib')!r}); print(m.score({{'viagra', 'free'}}).probability > 0.9, "
            "'sklearn' in sys.modules, 'joblib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_a_family_of_tokens_votes_once() -> None:
    """Ten markup tokens that only spam had in training are one clue, not ten: the words decide."""
    markup = {f"tag:t{i}" for i in range(10)}
    ham = [{"meeting", "agenda", "minutes", f"h{i}"} for i in range(40)]
    spam = [{"viagra", "free", f"s{i}"} | markup for i in range(40)]
    model = Model.train(ham + spam, [False] * 40 + [True] * 40)
    newsletter = model.score(markup | {"meeting", "agenda", "minutes"})
    assert newsletter.probability < 0.5
    assert model.score(markup).probability > 0.5  # alone, the family still says spam


def test_scores_never_saturate_and_keep_their_order() -> None:
    spam_words = [f"spam{i}" for i in range(400)]
    ham = [{"meeting", f"h{i}"} for i in range(50)]
    spam = [set(spam_words) | {f"s{i}"} for i in range(50)]
    model = Model.train(ham + spam, [False] * 50 + [True] * 50)
    scores = [model.score(spam_words[:n]) for n in (50, 100, 200, 400)]
    assert all(s.probability < 1.0 for s in scores)
    assert [s.log_odds for s in scores] == sorted(s.log_odds for s in scores)
    assert len({s.probability for s in scores}) == 4
    assert scores[0].log_odds == pytest.approx(math.log(scores[0].probability / (1 - scores[0].probability)))


def test_score_does_not_depend_on_token_order() -> None:
    sets, labels = _sets()
    model = Model.train(sets, labels)
    tokens = ["viagra", "free", "meeting", "agenda", "subject:winner", "zzz"]
    first = model.score(tokens)
    assert all(model.score(order) == first for order in (tokens[::-1], sorted(tokens), set(tokens)))


@pytest.mark.parametrize("m, n", [(0.5, 1), (3.0, 40), (45.0, 40), (120.0, 299), (480.0, 60), (700.0, 900),
                                  (900.0, 700), (0.5, 30)])
def test_chi_square_tails_match_scipy(m: float, n: int) -> None:
    from scipy.special import gammainc, gammaincc
    log_q, log_p = log_chi2_tails(m, n)
    assert log_q == pytest.approx(math.log(gammaincc(n, m)), rel=1e-9, abs=1e-10)
    assert log_p == pytest.approx(math.log(gammainc(n, m)), rel=1e-9, abs=1e-10)
