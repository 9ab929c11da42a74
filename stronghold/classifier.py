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
   chi-square): one test asks "is this unlikely for ham?", the other "for
   spam?", and the score is their difference, so mail where both or neither
   test is sure lands in an "unsure" middle near 0.5 instead of at 0 or 1;
4. that log-odds is compressed (``c * log1p(|L| / c)``) so the probability
   keeps its order and never reaches exactly 0.0 or 1.0: strongly-spam
   messages still get different scores.

Every step is a function of the set of tokens alone (voting tokens are taken
in bucket order, not set order), so the same bytes and the same model give the
same score in every process, whatever Python's hash seed.

A model is three files: ``model.joblib`` (the scikit-learn counts, needed to
learn), ``model.npy`` (the float32 log-odds table the filter scores with) and
``model.json`` (the passport: versions, counts, thresholds, figures, and the
SHA-256 of both).  Loading checks, before reading anything else, that the files
are not writable by other users and match their passport.  Scoring reads the
table with ``allow_pickle=False``, so the milter never unpickles anything (and
pre-forked workers share the parent's copy); scikit-learn is imported only to
train and learn.  Token hashing uses MurmurHash3 via ``mmh3``, the function
``FeatureHasher`` uses (a test checks they agree).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import stat
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mmh3
import numpy as np

from stronghold.tokens import TOKENIZER_VERSION, prefix_family

if TYPE_CHECKING:
    from sklearn.naive_bayes import MultinomialNB

    from stronghold.personal import Layer

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: chi-square combining of token families (Params changed)
N_FEATURES = 2**22
DEFAULT_SPAM_THRESHOLD = 0.9


class ModelError(Exception):
    """A model is missing, corrupt, unsafe or incompatible (one-line message)."""


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


@dataclass
class Passport:
    """Everything known about a model, stored beside it as JSON."""

    format_version: int = FORMAT_VERSION
    created: float = field(default_factory=lambda: creation_time())
    versions: dict[str, str] = field(default_factory=dict)
    n_features: int = N_FEATURES
    tokenizer: int = 1  # TOKENIZER_VERSION it was trained with (models from before the field: 1)
    params: dict[str, float] = field(default_factory=dict)
    spam_threshold: float = DEFAULT_SPAM_THRESHOLD
    threshold_method: str = "default"
    trained_ham: int = 0
    trained_spam: int = 0
    learned_ham: int = 0
    learned_spam: int = 0
    ledger_sha256: str = ""  # what of the learning ledger the counts hold (stronghold.learning)
    training_set_sha256: str = ""
    evaluation: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # why the training set may not be trusted
    file_sha256: str = ""
    table_sha256: str = ""

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Passport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)  # type: ignore[arg-type]


def creation_time() -> float:
    """Now, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds: then two trainings of the
    same data write byte-identical passports too)."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "")
    if fixed.isdigit():
        return float(fixed)
    return time.time()


def library_versions() -> dict[str, str]:
    import joblib
    import sklearn
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


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
        """
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
        clues = tuple(Clue(names[i], round(_sigmoid(float(vals[i])), 4)) for i in top)
        return Score(_sigmoid(logodds), clues, logodds)

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
        tmp_model = _temp_name(path, ".joblib")
        tmp_table = _temp_name(path, ".npy")
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
            self.passport.file_sha256 = _sha256(tmp_model)
            self.passport.table_sha256 = _sha256(tmp_table)
            self.passport.versions = library_versions()
            os.replace(tmp_model, path)
            os.replace(tmp_table, table_path(path))
            _atomic_write_text(passport_path(path), json.dumps(asdict(self.passport), indent=2))
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
        _check_compatible(passport, path, for_learning)
        if not for_learning:
            table = table_path(path)
            check_file_is_trusted(table)
            if not table.exists() or _sha256(table) != passport.table_sha256:
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
        if _sha256(path) != passport.file_sha256:
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


MAX_LOGODDS = 36.0  # 1 - sigmoid(36) ~ 2.3e-16: the largest log-odds a float64 probability below 1 shows


def _sigmoid(x: float) -> float:
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
        return _log_chi2_tails_large(m, n)
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


def _log_chi2_tails_large(m: float, n: int) -> tuple[float, float]:
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


def _temp_name(path: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return Path(name)


def table_path(path: Path) -> Path:
    return Path(path).with_suffix(".npy")


def passport_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def read_passport(path: Path) -> Passport:
    """The passport of the model at ``path`` (no unpickling)."""
    path = Path(path)
    side = passport_path(path)
    if not path.exists() and not side.exists():  # a node pulled from the store has no counts file
        raise ModelError(f"no model at {path}; train one with 'stronghold train'")
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"model {path} has no passport {side}; retrain it") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"passport {side} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"passport {side} is not a JSON object")
    return Passport.from_json(data)


def check_file_is_trusted(path: Path) -> None:
    """Refuse a file (or its folder) that users other than us or root can write.

    A joblib file is code: whoever can write it can run anything in the milter.
    """
    uid = os.geteuid()
    for target in (path, path.parent):
        st = target.stat()
        if st.st_uid not in (uid, 0):
            raise ModelError(f"refusing {target}: owned by uid {st.st_uid}, not by us or root")
        sticky_dir = target.is_dir() and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir:
            raise ModelError(f"refusing {target}: writable by other users (chmod go-w)")


def _check_compatible(passport: Passport, path: Path, for_learning: bool) -> None:
    if passport.format_version != FORMAT_VERSION:
        raise ModelError(f"model {path} has format {passport.format_version}, "
                         f"this version reads {FORMAT_VERSION}; retrain it")
    if passport.n_features != N_FEATURES:
        raise ModelError(f"model {path} uses {passport.n_features} features, expected {N_FEATURES}")
    if passport.tokenizer != TOKENIZER_VERSION:  # still usable: most features are the same
        log.warning("model %s was trained with tokenizer %d, this is %d: retrain it for full accuracy",
                    path, passport.tokenizer, TOKENIZER_VERSION)
    if for_learning:  # the pickle must come from the scikit-learn that reads it
        import sklearn
        saved = passport.versions.get("scikit-learn", "")
        if saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
            raise ModelError(f"model {path} was saved by scikit-learn {saved}, this is "
                             f"{sklearn.__version__}; retrain it")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
