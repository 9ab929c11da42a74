"""The C scorer (stronghold/native/scorecore.c) gives Model._score_py's Score to the bit."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.stages import corpus_messages
from stronghold import _scorecore as scorecore  # fails here when the C part is not built
from stronghold import chisquare, classifier, nativecore, tokens
from stronghold.classifier import Clue, Model, token_indices
from stronghold.message import parse
from stronghold.modelfile import N_FEATURES, Passport
from stronghold.personal import Layer


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)  # NaN equals NaN, 0.0 differs from -0.0


def _exact(score: Any) -> tuple[Any, ...]:
    """A Score as a tuple compared bit for bit (floats by their bytes)."""
    return (_bits(score.probability), _bits(score.log_odds),
            tuple((c.token, _bits(c.spam_prob)) for c in score.clues))


def _both(model: Model, toks: Any, n_reasons: int = 8, layer: Layer | None = None) -> tuple[Any, Any]:
    return _exact(model.score(toks, n_reasons, layer)), _exact(model._score_py(toks, n_reasons, layer))


def _native_score(table: np.ndarray, toks: Any, buckets: Any = None, values: Any = None) -> Any:
    return scorecore.score(table, toks, 8, buckets, values, {}, tokens.prefix_family, math.lgamma,
                           chisquare.log_chi2_tails_large, Clue)


@pytest.fixture(autouse=True)
def _score_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model.score in C here even under STRONGHOLD_NATIVE=0: these tests compare C with Python."""
    monkeypatch.setattr(classifier, "_native", scorecore)


def test_model_score_runs_in_c_unless_switched_off() -> None:
    assert nativecore.load("scorecore") is (scorecore if nativecore.enabled() else None)


# -- the corpus -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_features() -> list[set[str]]:
    paths = corpus_messages()
    if not paths:
        pytest.fail("the corpus is missing: run 'make corpus'")
    return [tokens.features(parse(p.read_bytes())) for p in paths]


@pytest.mark.corpus
def test_every_corpus_message_scores_the_same(corpus_features: list[set[str]], models_dir: Path) -> None:
    model = Model.load(models_dir / "model.joblib")  # trained on the standard split, for this session
    differ = [i for i, feats in enumerate(corpus_features)
              for toks in (feats, sorted(feats, reverse=True))
              if _exact(model.score(toks)) != _exact(model._score_py(toks))]
    assert not differ, f"{len(differ)} scores differ, first message #{differ[0]}"


@pytest.mark.corpus
def test_every_corpus_message_scores_the_same_with_a_personal_layer(corpus_features: list[set[str]],
                                                                    models_dir: Path) -> None:
    shared = Model.load(models_dir / "model.joblib", for_learning=True)
    layer = Layer.build(shared, corpus_features[::40], [i % 3 == 0 for i in range(len(corpus_features[::40]))])
    assert len(layer.buckets) > 1000
    moved = differ = 0
    for feats in corpus_features[::2]:
        native, python = _both(shared, feats, layer=layer)
        differ += native != python
        moved += native != _exact(shared.score(feats))
    assert differ == 0
    assert moved > 100  # the layer was applied


# -- any token set --------------------------------------------------------------------------------------

def _synthetic_model(seed: int) -> Model:
    """A model whose table votes for most buckets, with few distinct values (many exact ties)."""
    rng = np.random.default_rng(seed)
    levels = np.asarray([0.0, 0.0, 1.25, -1.25, 2.5, -2.5, 3.0, -3.0, 7.5, -0.75], dtype=np.float32)
    return Model(None, Passport(), rng.choice(levels, N_FEATURES))


SYNTHETIC = _synthetic_model(7)


def _colliding_pair() -> tuple[str, str]:
    """Two different tokens with one bucket (and the same prefix family), found by search."""
    names = [f"from:c{i}" for i in range(40_000)]
    seen: dict[int, str] = {}
    for name, bucket in zip(names, token_indices(names).tolist(), strict=True):
        if bucket in seen and SYNTHETIC._logodds[bucket] != 0:
            return seen[bucket], name
        seen[bucket] = name
    raise AssertionError("no collision found")


PAIR = _colliding_pair()
POOL = ["", ":", "::", "a:b", "subject:win", "skip:x40", "html:table", "tag:div", "received:relay",
        "list-id:news", "from:anna", "from:bert", "url:example.com", "urlpath:x", "x-mailer:outlook",
        "caf\u00e9", "\u65e5\u672c:\u8a9e", "\U0001f600:smile", "x" * 300, *PAIR]
TOKEN = st.one_of(st.sampled_from(POOL), st.text(max_size=12),
                  st.text(alphabet="ab:-\u00e9", max_size=6),
                  st.builds(lambda p, w: f"{p}:{w}", st.sampled_from(["from", "html", "received", "zz", "list-x"]),
                            st.text(max_size=4)))
SURROGATE_FREE = TOKEN.filter(lambda t: not any("\ud800" <= ch <= "\udfff" for ch in t))


def test_the_colliding_pair_shares_a_bucket() -> None:
    first, second = token_indices(list(PAIR)).tolist()
    assert PAIR[0] != PAIR[1] and first == second


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SURROGATE_FREE, max_size=200), st.integers(-5, 40), st.randoms(use_true_random=False))
@example([*PAIR, *PAIR], 8, None)
@example([PAIR[1], PAIR[0], "from:x", PAIR[1]], 1, None)
def test_any_token_list_in_any_order(toks: list[str], n_reasons: int, rnd: Any) -> None:
    native, python = _both(SYNTHETIC, toks, n_reasons)
    assert native == python
    shuffled = list(reversed(toks))
    if rnd is not None:
        rnd.shuffle(shuffled)
    assert _exact(SYNTHETIC.score(shuffled, n_reasons)) == native  # the order tokens come in does not matter
    distinct = _exact(SYNTHETIC._score_py(sorted(set(toks)), n_reasons))  # duplicates vote again: not in a set
    assert _exact(SYNTHETIC.score(set(toks), n_reasons)) == distinct
    assert _exact(SYNTHETIC.score(tuple(toks), n_reasons)) == native
    assert _exact(SYNTHETIC.score(iter(toks), n_reasons)) == native


@settings(max_examples=150, deadline=None)
@given(st.lists(SURROGATE_FREE, max_size=120), st.data())
def test_any_token_list_with_a_layer(toks: list[str], data: st.DataObject) -> None:
    buckets = np.unique(token_indices(toks)) if toks else np.zeros(0, dtype=np.int64)
    chosen = buckets[data.draw(st.lists(st.booleans(), min_size=len(buckets), max_size=len(buckets)))] \
        if len(buckets) else buckets
    extra = np.asarray(data.draw(st.lists(st.integers(0, N_FEATURES - 1), max_size=5)), dtype=np.int64)
    layer_buckets = np.unique(np.concatenate([chosen, extra]))
    values = np.asarray(data.draw(st.lists(st.sampled_from([0.0, 2.5, -2.5, 3.0, -8.0]),
                                           min_size=len(layer_buckets), max_size=len(layer_buckets))),
                        dtype=np.float32)
    layer = Layer(layer_buckets.astype(np.int64), values)
    native, python = _both(SYNTHETIC, toks, 8, layer)
    assert native == python
    assert _exact(SYNTHETIC.score(list(reversed(toks)), 8, layer)) == native


def test_huge_token_lists() -> None:
    rng = np.random.default_rng(3)
    for n in (129, 1000, 9000, 30_000):
        toks = [f"w{i}" if i % 3 else f"from:{i % 50}" for i in rng.permutation(n).tolist()]
        toks += toks[: n // 10]  # duplicates
        native, python = _both(SYNTHETIC, toks, 20)
        assert native == python
        assert _exact(SYNTHETIC.score(sorted(toks), 20)) == native


def test_nan_and_extreme_table_values() -> None:
    model = _synthetic_model(11)
    toks = [f"t{i}" for i in range(300)] + [f"html:{i}" for i in range(40)]
    idx = token_indices(toks)
    model._logodds[idx[::7]] = np.nan
    model._logodds[idx[1::7]] = 40.0
    model._logodds[idx[2::7]] = -1e-30
    for n_reasons in (0, 8, 500, -3):
        with np.errstate(invalid="ignore"):  # numpy warns of the NaN votes; the C says nothing
            native, python = _both(model, toks, n_reasons)
        assert native == python


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-40.0, 40.0, width=32).filter(lambda v: v != 0.0), max_size=300))
@example([30.0] * 250)  # a spam mass past 500: the large-m branch, called back in Python
@example([-30.0] * 1000)
@example([13.8] * 37 + [-0.1] * 3)  # m around 500
@example([1e-30, -1e-30, 5.0])
def test_chi_square_to_the_bit(votes: list[float]) -> None:
    native = scorecore.chi_square_logodds(votes, math.lgamma, chisquare.log_chi2_tails_large)
    assert _bits(native) == _bits(chisquare.chi_square_logodds(votes))


def test_chi_square_pairwise_sums_of_every_size() -> None:
    rng = np.random.default_rng(5)
    for n in [*range(1, 300), 1000, 4095, 8193, 20_000]:
        votes = (rng.standard_normal(n) * 4).tolist()
        native = scorecore.chi_square_logodds(votes, math.lgamma, chisquare.log_chi2_tails_large)
        assert _bits(native) == _bits(chisquare.chi_square_logodds(votes)), n


# -- bad input ------------------------------------------------------------------------------------------

def test_bad_tables_are_refused() -> None:
    table = SYNTHETIC._logodds
    with pytest.raises(TypeError, match="table"):
        _native_score(table.astype(np.float64), ["a"])
    with pytest.raises(TypeError, match="table"):
        _native_score(table.reshape(2, -1), ["a"])
    with pytest.raises(ValueError, match="power of two"):
        _native_score(table[:1000], ["a"])
    with pytest.raises(ValueError, match="contiguous"):
        _native_score(table[::2], ["a"])
    with pytest.raises(TypeError):
        _native_score(b"\0" * 16, ["a"])


def test_bad_tokens_are_refused() -> None:
    for bad in (b"abc", 5, None, bytearray(b"x")):
        with pytest.raises(TypeError, match="tokens must be str"):
            SYNTHETIC.score(["from:a", bad])  # type: ignore[list-item]
    with pytest.raises(UnicodeEncodeError):  # (mmh3 5.3.1 crashes the process on this one)
        SYNTHETIC.score(["from:a", "x\ud800y"])
    with pytest.raises(TypeError, match="iterable"):
        SYNTHETIC.score(5)  # type: ignore[arg-type]


def test_bad_layers_and_arguments_are_refused() -> None:
    table = SYNTHETIC._logodds
    with pytest.raises(TypeError, match="layer_buckets"):
        _native_score(table, ["a"], np.zeros(2, dtype=np.int32), np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="length"):
        _native_score(table, ["a"], np.zeros(2, dtype=np.int64), np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match="together"):
        _native_score(table, ["a"], np.zeros(2, dtype=np.int64), None)
    with pytest.raises(TypeError, match="10 arguments"):
        scorecore.score(table, ["a"])
    with pytest.raises(TypeError, match="clue_type"):
        scorecore.score(table, ["a"], 8, None, None, {}, tokens.prefix_family, math.lgamma,
                        chisquare.log_chi2_tails_large, int)

    def broken_family(prefix: str) -> str:
        raise RuntimeError("no family")
    toks = [f"from:{i}" for i in range(50)]
    with pytest.raises(RuntimeError, match="no family"):
        scorecore.score(table, toks, 8, None, None, {}, broken_family, math.lgamma,
                        chisquare.log_chi2_tails_large, Clue)


def test_a_model_with_another_table_size_scores_in_python() -> None:
    small = Model(None, Passport(n_features=1024), SYNTHETIC._logodds[:1024].copy())
    for score in (small.score, small._score_py):  # the same IndexError: Python's code ran
        with pytest.raises(IndexError):
            score(["a", "b", "c", "d"])


def test_header_names_whose_hashes_collide() -> None:
    """Prefixes chosen so that MurmurHash3 puts them in one place of the C's prefix table."""
    import mmh3
    toks: list[str] = []
    for i in range(400_000):
        prefix = f"x-h{i}"
        if mmh3.hash(prefix) & 1023 == 5:
            toks += [f"{prefix}:a", f"{prefix}:b", f"{prefix}:c"]
    assert len(toks) > 600
    native, python = _both(SYNTHETIC, toks, 20)
    assert native == python
    assert _exact(SYNTHETIC.score(list(reversed(toks)), 20)) == native
