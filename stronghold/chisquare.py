"""Combining token votes into one log-odds: Robinson's chi-square, then compression.

Each vote is a token's log-odds of spam.  Fisher's method is applied both ways:
one chi-square test asks "is this unlikely for ham?", the other "for spam?",
and the result is the log-odds of Robinson's indicator ``(1 + S - H) / 2``,
computed from the tails in log space so that it stays finite and exact far
past a probability of 1 - 1e-16.  ``compress`` then maps that log-odds
monotonically into +-``MAX_LOGODDS`` so that very spammy messages still get
different probabilities.  Pure math on floats and numpy arrays: no model, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAX_LOGODDS = 36.0  # 1 - sigmoid(36) ~ 2.3e-16: the largest log-odds a float64 probability below 1 shows


def sigmoid(x: float) -> float:
    """``1 / (1 + exp(-x))`` without overflow for large negative ``x``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def compress(logodds: float, c: float) -> float:
    """``c * log1p(|L| / c)``, sign kept, within +-MAX_LOGODDS: monotone, so ranks are kept."""
    if c <= 0:
        return max(-MAX_LOGODDS, min(MAX_LOGODDS, logodds))
    return math.copysign(min(MAX_LOGODDS, c * math.log1p(abs(logodds) / c)), logodds)


_LOG_FACT = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 4097, dtype=np.float64)))])


def _log_factorials(upto: int) -> np.ndarray:
    global _LOG_FACT
    if upto >= len(_LOG_FACT):
        more = np.arange(len(_LOG_FACT), 2 * upto + 1, dtype=np.float64)
        _LOG_FACT = np.concatenate([_LOG_FACT, _LOG_FACT[-1] + np.cumsum(np.log(more))])
    return _LOG_FACT


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.exp(x - top).sum()))


def log_chi2_tails(m: float, n: int) -> tuple[float, float]:
    """log Q and log P of a chi-square with 2n degrees of freedom at 2m (both tails, no cancellation).

    For even degrees of freedom Q = exp(-m) * sum(m**i / i!, i < n), the
    Poisson sum; P = 1 - Q is summed from its own terms when Q is near 1.
    """
    if m <= 0:
        return 0.0, -math.inf
    if m > 500:  # the terms would overflow a float: sum them in log space
        return log_chi2_tails_large(m, n)
    term = total = 1.0
    for i in range(1, n):
        term *= m / i
        total += term
    log_q = math.log(total) - m
    if log_q < -0.7:
        return log_q, math.log1p(-math.exp(log_q))
    term = math.exp(n * math.log(m) - math.lgamma(n + 1) - m)  # the first term of P
    total = 0.0
    i = n
    while term > total * 1e-17:
        total += term
        i += 1
        term *= m / i
    return log_q, math.log(total) if total > 0 else -math.inf


def log_chi2_tails_large(m: float, n: int) -> tuple[float, float]:
    """``log_chi2_tails`` for ``m > 500``, in log space (numpy: the C scorer calls this one back)."""
    logm = math.log(m)
    upper = max(n, int(m)) + int(12 * math.sqrt(m) + 40)
    lf = _log_factorials(upper)
    i = np.arange(n, dtype=np.float64)
    log_q = _logsumexp(-m + i * logm - lf[:n])
    if log_q < -0.7:
        return log_q, math.log1p(-math.exp(log_q))
    j = np.arange(n, upper + 1, dtype=np.float64)
    return log_q, _logsumexp(-m + j * logm - lf[n:upper + 1])


def chi_square_logodds(votes: Sequence[float]) -> float:
    """Robinson's chi-square combining of per-clue log-odds, as a log-odds.

    S = 1 - Q(-2 sum ln(1 - f)), H = 1 - Q(-2 sum ln f), indicator
    I = (1 + S - H) / 2; returned as log(I / (1 - I)), computed from the tails
    so that it stays finite and exact far beyond I = 1 - 1e-16.
    """
    n = len(votes)
    if n == 0:
        return 0.0
    v = np.asarray(votes, dtype=np.float64)  # log-odds v of each clue's f
    m_spam = float(np.logaddexp(0.0, v).sum())  # -sum ln(1 - f)
    m_ham = float(np.logaddexp(0.0, -v).sum())  # -sum ln f
    log_qs, log_ps = log_chi2_tails(m_spam, n)
    log_qh, log_ph = log_chi2_tails(m_ham, n)
    return _logaddexp(log_ps, log_qh) - _logaddexp(log_qs, log_ph)


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    if top == -math.inf:
        return -math.inf
    return top + math.log1p(math.exp(min(a, b) - top))
