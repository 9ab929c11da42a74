"""Evaluation figures and the out-of-fold threshold on small hand-made data."""

from __future__ import annotations

import pytest

from stronghold.classifier import Params
from stronghold.training import CV_FOLDS, UNSURE_EDGE, CorpusError, calibrate_threshold, evaluate, unsure_edge


def test_auc_counts_ties_half_and_rates_use_the_threshold() -> None:
    # ham 0.1, 0.5 against spam 0.5, 0.9: three pairs ranked right, one tie -> AUC 3.5 / 4
    e = evaluate([0.1, 0.5, 0.5, 0.9], [False, False, True, True], threshold=0.5)
    assert e.one_minus_auc_pct == pytest.approx(12.5)
    assert (e.n_ham, e.n_spam, e.fp_rate, e.fn_rate) == (2, 2, 0.5, 0.0)
    assert evaluate([0.9, 0.1], [False, True], 0.5).one_minus_auc_pct == pytest.approx(100.0)


def test_evaluation_needs_both_classes() -> None:
    with pytest.raises(CorpusError, match="both ham and spam"):
        evaluate([0.1, 0.2], [False, False], 0.5)


def _sets(n_ham: int, n_spam: int) -> tuple[list[set[str]], list[bool]]:
    ham = [{"word:meeting", "word:agenda", f"word:h{i}"} for i in range(n_ham)]
    spam = [{"word:viagra", "word:cheap", f"word:s{i}"} for i in range(n_spam)]
    return ham + spam, [False] * n_ham + [True] * n_spam


def test_every_ham_is_scored_out_of_fold_once() -> None:
    sets, labels = _sets(8, 6)  # ham first, then spam: every fold still holds both (stratified)
    choice = calibrate_threshold(sets, labels, Params())
    assert choice.method.startswith("floor:") and f"{CV_FOLDS}-fold out-of-fold ham: 0 of 8 " in choice.method
    assert choice.threshold == unsure_edge(Params())


def test_fewer_of_a_class_than_folds_uses_fewer_folds() -> None:
    sets, labels = _sets(5, 2)
    assert "2-fold out-of-fold ham: 0 of 5 " in calibrate_threshold(sets, labels, Params()).method
    sets, labels = _sets(5, 1)  # one spam: no fold can train on both classes
    choice = calibrate_threshold(sets, labels, Params())
    assert choice.method == f"chi-square indicator {UNSURE_EDGE} (no out-of-fold ham to measure)"
    assert choice.warnings
