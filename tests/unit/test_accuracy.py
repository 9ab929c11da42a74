"""Accuracy floor on the standard split, so a regression fails CI (figures: bench/accuracy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stronghold.classifier import Model
from stronghold.training import collect, evaluate, tokenize

pytestmark = pytest.mark.corpus


def test_standard_split_floor(model: Model, corpus: Path) -> None:
    samples = list(collect(index=corpus / "index.test"))
    assert len(samples) == 1867
    scores = [model.score(tokenize(s.raw)).probability for s in samples]
    result = evaluate(scores, [s.is_spam for s in samples], model.spam_threshold)
    assert result.one_minus_auc_pct <= 0.05  # AUC >= 0.9995 (bogofilter: 0.028)
    assert result.fp_rate <= 0.002  # at most 2 of 1,284 ham lost at the default threshold
    assert result.fn_rate <= 0.15
    assert result.fn_rate_at_fp_0_1pct <= 0.0635  # bogofilter's figure
