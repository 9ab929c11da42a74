"""The Bayesian classifier: train, learn, save, load, score.

Counting is scikit-learn's: feature tokens are hashed (``FeatureHasher``) into
a fixed space and ``MultinomialNB.partial_fit`` on binary rows keeps, per
class, the number of messages that contain each token (``feature_count_``).
On top of those counts we combine the way bogofilter and SpamBayes do, with
one change for mail unlike the training data:

1. each token's spam probability is smoothed towards 0.5 by its evidence
   (Robinson); tokens within ``min_dev`` of 0.5 do not vote;
2. tokens of one *family* (``tokens.family``: all markup and MIME structure,
   all routing and mailing-list headers, all ``From`` tokens ...) vote once,
   with their strongest clue, because they describe one fact: counted as ten
   independent clues, the markup of any newsletter made it certain spam;
3. the votes are combined by Fisher's method both ways (Robinson's
   chi-square, ``stronghold.chisquare``): one test asks "is this unlikely for
   ham?", the other "for spam?", and the score is their difference, so mail
   where both or neither test is sure lands in an "unsure" middle near 0.5
   instead of at 0 or 1;
4. that log-odds is compressed (``chisquare.compress``: ``c * log1p(|L| / c)``)
   so the probability keeps its order and never reaches exactly 0.0 or 1.0:
   strongly-spam messages still get different scores.

Every step is a function of the set of tokens alone (voting tokens are taken
in bucket order, not set order), so the same bytes and the same model give the
same score in every process, whatever Python's hash seed.

A model's files, passport and trust checks are ``stronghold.modelfile``'s.
Scoring reads only the float32 table (``allow_pickle=False``): the milter never
unpickles anything, and scikit-learn is imported only to train and learn.
Token hashing uses MurmurHash3 via ``mmh3``, the function ``FeatureHasher``
uses (a test checks they agree).

``Model.score`` runs in C (``stronghold/native/scorecore.c``) when the native core is built, with
the same result to the bit; ``Model._score_py`` is the reference and the fallback.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mmh3
import numpy as np

from stronghold import nativecore
from stronghold.chisquare import chi_square_logodds, compress, log_chi2_tails_large, sigmoid
from stronghold.modelfile import (
    FORMAT_VERSION,
    N_FEATURES,
    ModelError,
    Passport,
    atomic_write_text,
    check_compatible,
    check_file_is_trusted,
    library_versions,
    passport_path,
    read_passport,
    sha256_of,
    table_path,
    temp_name,
)
from stronghold.tokens import TOKENIZER_VERSION, prefix_family

if TYPE_CHECKING:
    from sklearn.naive_bayes import MultinomialNB

    from stronghold.personal import Layer

_native = nativecore.load("scorecore")
_family_cache: dict[str, str | None] = {}  # prefix -> prefix_family(prefix), for the C scorer


@dataclass(frozen=True)
class Params:
    """How token counts become a score."""

    strength: float = 0.2  # Robinson's s: weight of the 0.5 prior against evidence
    prior: float = 0.5  # Robinson's x: probability assumed for a token never seen
    min_dev: float = 0.35  # tokens closer than this to 0.5 do not vote
    compress: float = 4.0  # chi-square log-odds L is reported as c * log1p(|L| / c)


@dataclass(frozen=True)
class Clue:
    token: str
    spam_prob: float


@dataclass(frozen=True)
class Score:
    """The classifier's answer for one message.

    ``logodds`` is ``log(p / (1 - p))`` of ``probability``, kept because it
    does not lose resolution near 0 and 1 (None: derived from the probability).
    """

    probability: float
    clues: tuple[Clue, ...]
    logodds: float | None = None

    @property
    def log_odds(self) -> float:
        if self.logodds is not None:
            return self.logodds
        p = min(max(self.probability, 1e-300), 1.0 - 1e-16)
        return math.log(p / (1.0 - p))


def token_indices(tokens: Sequence[str]) -> np.ndarray:
    """Hash bucket of each token, in order (the buckets FeatureHasher uses)."""
    idx = np.fromiter(map(mmh3.hash, tokens), dtype=np.int64, count=len(tokens))  # signed 32-bit, as FeatureHasher
    np.abs(idx, out=idx)
    idx &= N_FEATURES - 1  # = % N_FEATURES (a power of two) of a number >= 0
    return idx


def feature_matrix(token_sets: Iterable[Iterable[str]]) -> Any:
    """Binary message-by-bucket matrix (scipy sparse) for training."""
    from sklearn.feature_extraction import FeatureHasher
    hasher = FeatureHasher(n_features=N_FEATURES, input_type="string", alternate_sign=False)
    matrix = hasher.transform(list(t) for t in token_sets)
    matrix.data[:] = 1.0
    return matrix


class Model:
    """A trained classifier: counts (for learning) and log-odds (for scoring)."""

    def __init__(self, nb: MultinomialNB | None, passport: Passport,
                 logodds: np.ndarray | None = None) -> None:
        self.nb = nb
        self.passport = passport
        self.params = Params(**cast(dict[str, Any], passport.params)) if passport.params else Params()
        self._logodds = logodds if logodds is not None else self._compute_logodds()

    # -- training -----------------------------------------------------------
    @classmethod
    def train(cls, token_sets: Sequence[set[str]], labels: Sequence[bool],
              params: Params | None = None) -> Model:
        """Fit a new model; labels are True for spam."""
        y = np.asarray(labels, dtype=int)
        n_spam = int(y.sum())
        if n_spam == 0 or n_spam == len(y):
            raise ModelError("training needs both ham and spam messages")
        from sklearn.naive_bayes import MultinomialNB
        nb = MultinomialNB()
        nb.partial_fit(feature_matrix(token_sets), y, classes=[0, 1])
        passport = Passport(versions=library_versions(), tokenizer=TOKENIZER_VERSION,
                            params=asdict(params or Params()),
                            trained_ham=len(y) - n_spam, trained_spam=n_spam)
        return cls(nb, passport)

    def learn(self, token_sets: Sequence[set[str]], labels: Sequence[bool]) -> None:
        """Incremental update (user feedback) without a full retrain."""
        self.adjust(token_sets, labels, [], [])

    def adjust(self, add: Sequence[set[str]], add_labels: Sequence[bool],
               remove: Sequence[set[str]], remove_labels: Sequence[bool]) -> None:
        """Add the counts of ``add`` and take out those of ``remove`` (learned before), in one pass.

        Counts are whole numbers held in float64, so adding and taking out are exact: a model
        that learned, unlearned and relearned equals one that learned the end result once.
        """
        if not add and not remove:
            return
        if self.nb is None:
            raise ModelError("this model was loaded for scoring only; load it with for_learning=True")
        y = np.asarray([*add_labels, *remove_labels], dtype=int)
        weights = np.asarray([1.0] * len(add) + [-1.0] * len(remove))
        self.nb.partial_fit(feature_matrix([*add, *remove]), y, sample_weight=weights)
        if (self.nb.class_count_ < 0).any() or (self.nb.feature_count_ < 0).any():
            raise ModelError("unlearning took out counts this model never held (model and ledger disagree)")
        added = np.asarray(add_labels, dtype=int)
        removed = np.asarray(remove_labels, dtype=int)
        self.passport.learned_spam += int(added.sum()) - int(removed.sum())
        self.passport.learned_ham += (len(added) - int(added.sum())) - (len(removed) - int(removed.sum()))
        self._logodds = self._compute_logodds()

    def _compute_logodds(self) -> np.ndarray:
        """Per-bucket log-odds (float32), in chunks so that temporaries stay small."""
        assert self.nb is not None
        ham_counts, spam_counts = self.nb.feature_count_
        n_ham, n_spam = self.nb.class_count_
        out = np.zeros(len(ham_counts), dtype=np.float32)
        step = 1 << 18
        for start in range(0, len(out), step):
            out[start:start + step] = logodds_from_counts(ham_counts[start:start + step],
                                                          spam_counts[start:start + step],
                                                          float(n_ham), float(n_spam), self.params)
        return out

    # -- scoring ------------------------------------------------------------
    def score(self, tokens: Iterable[str], n_reasons: int = 8, layer: Layer | None = None) -> Score:
        """Spam probability in (0, 1), its log-odds and the tokens that decided it.

        ``layer``: a recipient's personal layer (``stronghold.personal``) over the shared counts.
        In C when the native core is built (``_score_py`` is the reference it matches, to the bit,
        for layers whose buckets are sorted as ``Layer`` keeps them).
        """
        if _native is None or len(self._logodds) != N_FEATURES:
            return self._score_py(tokens, n_reasons, layer)
        if layer is None:
            buckets = values = None
        else:
            buckets = np.ascontiguousarray(layer.buckets, dtype=np.int64)
            values = np.ascontiguousarray(layer.values, dtype=np.float32)
        raw, clues = _native.score(self._logodds, tokens, n_reasons, buckets, values, _family_cache,
                                   prefix_family, math.lgamma, log_chi2_tails_large, Clue)
        logodds = compress(raw, self.params.compress)
        return Score(sigmoid(logodds), clues, logodds)

    def _score_py(self, tokens: Iterable[str], n_reasons: int = 8, layer: Layer | None = None) -> Score:
        """``score`` in Python: the reference the C scorer is tested against, and its fallback."""
        toks = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
        idx = token_indices(toks)
        values = self._logodds[idx]
        if layer is not None:
            values = layer.adjust(idx, values)
        # Only voting tokens matter, taken in bucket order so that nothing depends on the order
        # tokens came in (set order changes with the hash seed); a bucket shared by two tokens
        # of one message is ordered by the tokens themselves.
        voting = np.flatnonzero(values)
        buckets = idx[voting]
        order = np.argsort(buckets, kind="stable")
        voting = voting[order]
        if len(voting) > 1 and not bool(np.all(np.diff(buckets[order]) > 0)):
            voting = np.asarray(sorted(voting.tolist(), key=lambda i: (int(idx[i]), toks[i])), dtype=np.int64)
        names = [toks[i] for i in voting.tolist()]
        vals = values[voting].astype(np.float64)
        votes: list[float] = []  # content tokens vote each
        families: dict[str, float] = {}  # family -> its strongest clue (the first on a tie)
        family_of = prefix_family
        for token, value in zip(names, vals.tolist(), strict=True):
            colon = token.find(":")
            if colon < 0 or (fam := family_of(token[:colon])) is None:
                votes.append(value)
            elif abs(value) > abs(families.get(fam, 0.0)):
                families[fam] = value
        votes.extend(families.values())
        logodds = compress(chi_square_logodds(votes), self.params.compress)
        top = np.argsort(-np.abs(vals), kind="stable")[:n_reasons].tolist()
        clues = tuple(Clue(names[i], round(sigmoid(float(vals[i])), 4)) for i in top)
        return Score(sigmoid(logodds), clues, logodds)

    @property
    def spam_threshold(self) -> float:
        return self.passport.spam_threshold

    @property
    def memory_bytes(self) -> int:
        """Bytes held for scoring (the log-odds table)."""
        return int(self._logodds.nbytes)

    # -- persistence --------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write counts, table and passport atomically (temp files, then renames).

        The passport is renamed last: until then it names the old files'
        hashes, so a reader sees the old model or refuses, never a mix.
        """
        import joblib
        if self.nb is None:
            raise ModelError("a model loaded for scoring only cannot be saved")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_model = temp_name(path, ".joblib")
        tmp_table = temp_name(path, ".npy")
        saved_log_prob = getattr(self.nb, "feature_log_prob_", None)
        try:
            if saved_log_prob is not None:  # derivable; partial_fit recomputes it
                del self.nb.feature_log_prob_
            joblib.dump({"format_version": FORMAT_VERSION, "nb": self.nb}, tmp_model, compress=3)
            with open(tmp_table, "wb") as fh:
                np.save(fh, np.asarray(self._logodds, dtype=np.float32), allow_pickle=False)
            for tmp in (tmp_model, tmp_table):
                os.chmod(tmp, 0o644)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            self.passport.file_sha256 = sha256_of(tmp_model)
            self.passport.table_sha256 = sha256_of(tmp_table)
            self.passport.versions = library_versions()
            os.replace(tmp_model, path)
            os.replace(tmp_table, table_path(path))
            atomic_write_text(passport_path(path), json.dumps(asdict(self.passport), indent=2))
        finally:
            if saved_log_prob is not None:
                self.nb.feature_log_prob_ = saved_log_prob
            for tmp in (tmp_model, tmp_table):
                if tmp.exists():
                    tmp.unlink()

    @classmethod
    def load(cls, path: Path, for_learning: bool = False) -> Model:
        """Load a model, refusing anything missing, unsafe, corrupt or incompatible.

        For scoring, only the table is read (memory-mapped, no pickle); the
        scikit-learn counts are unpickled only ``for_learning``.
        """
        path = Path(path)
        passport = read_passport(path)
        check_compatible(passport, path, for_learning)
        if not for_learning:
            table = table_path(path)
            check_file_is_trusted(table)
            if not table.exists() or sha256_of(table) != passport.table_sha256:
                raise ModelError(f"model table {table} does not match its passport (corrupt or replaced);"
                                 " retrain with 'stronghold train'")
            try:
                logodds = np.load(table, allow_pickle=False)  # not mmap: a file rewritten in place must not change it
            except (OSError, ValueError) as exc:
                raise ModelError(f"model table {table} cannot be read: {exc}") from exc
            if logodds.shape != (passport.n_features,) or logodds.dtype != np.float32:
                raise ModelError(f"model table {table} has the wrong shape or type")
            return cls(None, passport, logodds)
        import joblib
        from sklearn.naive_bayes import MultinomialNB
        check_file_is_trusted(path)
        if sha256_of(path) != passport.file_sha256:
            raise ModelError(f"model {path} does not match its passport (corrupt or replaced);"
                             " retrain with 'stronghold train'")
        try:
            blob = joblib.load(path)
        except (OSError, EOFError, ValueError, KeyError, ImportError, AttributeError) as exc:
            raise ModelError(f"model {path} cannot be read: {exc}") from exc
        nb = blob.get("nb") if isinstance(blob, dict) else None
        if not isinstance(nb, MultinomialNB):
            raise ModelError(f"model {path} is not a Mail Stronghold model")
        return cls(nb, passport)


def logodds_from_counts(ham: np.ndarray, spam: np.ndarray, n_ham: float, n_spam: float,
                        p: Params) -> np.ndarray:
    """Per-bucket voting log-odds from per-class message counts (0 where a token does not vote)."""
    cutoff = math.log((0.5 + p.min_dev) / (0.5 - p.min_dev))
    seen = ham + spam
    rs = spam / max(n_spam, 1.0)
    rh = ham / max(n_ham, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.where(seen > 0, rs / (rs + rh), p.prior)
    smoothed = np.clip((p.strength * p.prior + seen * raw) / (p.strength + seen), 1e-6, 1 - 1e-6)
    out = np.log(smoothed / (1.0 - smoothed))
    out[np.abs(out) < cutoff] = 0.0
    return out.astype(np.float32)
