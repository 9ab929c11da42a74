"""Corpora in, models and evaluation figures out.

A corpus path may be a maildir (``cur/`` and ``new/``), an mbox file, a folder
of message files (searched recursively) or one message file.  An index file
holds ``spam PATH`` / ``ham PATH`` lines, paths relative to the index's folder
unless absolute (the TREC spam-track layout).
"""

from __future__ import annotations

import hashlib
import mailbox
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from stronghold.chisquare import compress
from stronghold.classifier import Model, Params
from stronghold.message import parse
from stronghold.modelfile import ModelError
from stronghold.received import as_received
from stronghold.tokens import features

TARGET_FP_RATE = 0.0005  # the threshold is set so out-of-fold ham errs at most this often
CV_FOLDS = 4
FOLD_SEED = 0  # folds are shuffled, the same way every time: the same data gives the same threshold
# The threshold never goes below chi-square indicator 0.95 (between SpamBayes's spam cut-off 0.90 and
# bogofilter's 0.99): below it is the "unsure" middle where mail unlike the training data lands,
# whatever out-of-fold ham says.
UNSURE_EDGE = 0.95
MIN_PER_CLASS = 500  # fewer training messages of a class than this: warn
MIN_SENDERS = 50  # fewer distinct From addresses in a class than this: warn (a narrow corpus)


class CorpusError(Exception):
    """A corpus path or index cannot be used (one-line message)."""


@dataclass(frozen=True)
class Sample:
    """One labelled message: where it came from and its raw bytes."""

    source: str
    is_spam: bool
    raw: bytes


def _is_mbox(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(5) == b"From " and path.suffix not in (".eml", ".txt")


def iter_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(source, raw bytes) of every message under ``path``."""
    for source, fh in iter_message_files(path):
        yield source, fh.read()


def iter_message_files(path: Path) -> Iterator[tuple[str, BinaryIO]]:
    """(source, binary file) of every message under ``path``, for reading a message without
    holding it whole (``stronghold scan``); read each before asking for the next."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            items = [item for sub in ("new", "cur") for item in sorted((path / sub).iterdir()) if item.is_file()]
        else:
            items = [item for item in sorted(path.rglob("*")) if item.is_file() and not item.name.startswith(".")]
        for item in items:
            with open(item, "rb") as fh:
                yield str(item), fh
        return
    try:
        is_mbox = _is_mbox(path)
    except OSError as exc:
        raise CorpusError(f"{path}: {exc.strerror}") from exc
    if is_mbox:
        box = mailbox.mbox(str(path), create=False)
        try:
            for key in box.keys():
                yield f"{path}#{key}", cast(BinaryIO, box.get_file(key))  # the message less its From line
        finally:
            box.close()
        return
    with open(path, "rb") as fh:
        yield str(path), fh


_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
SNIFF_BYTES = 64 * 1024


def check_mail(source: str, raw: bytes) -> None:
    """Refuse what is not a mail message: binary data, or no header block at the top."""
    head = raw[:SNIFF_BYTES]
    if b"\x00" in head:
        raise CorpusError(f"{source}: binary data (NUL bytes), not a mail message")
    if head.startswith(b"From "):
        head = head.split(b"\n", 1)[1] if b"\n" in head else b""
    if not head.strip():
        raise CorpusError(f"{source}: empty, no message in it")
    if not _HEADER_FIELD.match(head):
        raise CorpusError(f"{source}: no header block (the first line is not 'Name: value'), not a mail message")


def read_messages(path: Path) -> list[tuple[str, bytes]]:
    """Every message under ``path``, each checked to be mail; an empty folder or mbox is an error."""
    found = list(iter_messages(path))
    if not found:
        kind = "folder" if Path(path).is_dir() else "file"
        raise CorpusError(f"{path}: no messages in this {kind}")
    for source, raw in found:
        check_mail(source, raw)
    return found


def check_labels(samples: Sequence[Sample]) -> None:
    """The same message given as ham and as spam is an error (one of the two labels is wrong)."""
    seen: dict[str, Sample] = {}
    for sample in samples:
        key = hashlib.sha256(sample.raw).hexdigest()
        other = seen.setdefault(key, sample)
        if other.is_spam != sample.is_spam:
            ham, spam = (other, sample) if sample.is_spam else (sample, other)
            raise CorpusError(f"the same message is given as ham ({ham.source}) and as spam ({spam.source})")


def read_index(index: Path) -> list[tuple[bool, Path]]:
    """(is_spam, path) pairs of a TREC-style index file."""
    try:
        lines = os.fsdecode(Path(index).read_bytes()).splitlines()  # paths as the file system names them
    except OSError as exc:
        raise CorpusError(f"{index}: {exc.strerror}") from exc
    entries: list[tuple[bool, Path]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0].lower() not in ("spam", "ham"):
            raise CorpusError(f"{index}:{number}: expected 'spam PATH' or 'ham PATH'")
        target = Path(parts[1].strip())
        if not target.is_absolute():
            target = Path(index).parent / target
        entries.append((parts[0].lower() == "spam", target))
    return entries


def collect(ham: Sequence[Path] = (), spam: Sequence[Path] = (),
            index: Path | None = None) -> Iterator[Sample]:
    """Every labelled message named by the arguments."""
    for is_spam, paths in ((False, ham), (True, spam)):
        for path in paths:
            for source, raw in read_messages(path):
                yield Sample(source, is_spam, raw)
    if index is not None:
        for is_spam, path in read_index(index):
            for source, raw in iter_messages(path):
                check_mail(source, raw)
                yield Sample(source, is_spam, raw)


def tokenize(raw: bytes) -> set[str]:
    """Features of a message file as the milter will see it (``received.as_received``), so
    training, benchmarks and ``scan`` learn and score exactly what arrives through Postfix."""
    return features(parse(as_received(raw)))


def in_holdout(source: str, fraction: float) -> bool:
    """Deterministic split by the name of the message."""
    if fraction <= 0:
        return False
    name = Path(source.split("#", 1)[0]).name + source.partition("#")[2]
    bucket = int(hashlib.md5(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


@dataclass
class Evaluation:
    """Ranking and error figures of scores against labels."""

    n_ham: int
    n_spam: int
    one_minus_auc_pct: float
    fp_rate: float
    fn_rate: float
    fn_rate_at_fp_0_1pct: float
    threshold: float
    fn_rate_at_fp_1pct: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def evaluate(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> Evaluation:
    """(1-AUC)%, error rates at ``threshold`` and FN rate at <=0.1% FP."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    ham, spam = s[~y], s[y]
    if len(ham) == 0 or len(spam) == 0:
        raise CorpusError("evaluation needs both ham and spam")
    from sklearn.metrics import roc_auc_score  # here: scikit-learn's import costs every command ~1 s

    auc = float(roc_auc_score(y, s))  # ties counted half (Mann-Whitney)
    return Evaluation(
        n_ham=len(ham), n_spam=len(spam),
        one_minus_auc_pct=(1 - auc) * 100,
        fp_rate=float((ham >= threshold).mean()),
        fn_rate=float((spam < threshold).mean()),
        fn_rate_at_fp_0_1pct=_fn_rate_at_fp(ham, spam, 0.001),
        threshold=threshold,
        fn_rate_at_fp_1pct=_fn_rate_at_fp(ham, spam, 0.01),
    )


def _fn_rate_at_fp(ham: np.ndarray, spam: np.ndarray, fp_rate: float) -> float:
    """Spam missed by the lowest threshold that lets at most ``fp_rate`` of ham through."""
    allowed = int(len(ham) * fp_rate)
    cut = np.sort(ham)[::-1][allowed] if allowed < len(ham) else -np.inf
    return float((spam <= cut).mean())


@dataclass(frozen=True)
class ThresholdChoice:
    """The spam threshold ``train`` chose, how, and what makes it doubtful."""

    threshold: float
    method: str
    warnings: tuple[str, ...] = ()


def unsure_edge(params: Params) -> float:
    """The probability that chi-square indicator ``UNSURE_EDGE`` becomes after compression."""
    logodds = compress(math.log(UNSURE_EDGE / (1 - UNSURE_EDGE)), params.compress)
    return 1.0 / (1.0 + math.exp(-logodds))


def calibrate_threshold(token_sets: Sequence[set[str]], labels: Sequence[bool],
                        params: Params, target_fp: float = TARGET_FP_RATE) -> ThresholdChoice:
    """Spam threshold from out-of-fold scores of the training set.

    Each fold is scored by a model trained on the others.  The folds are
    stratified and shuffled with a fixed seed: the same data always gives the
    same threshold, and it does not hinge on the order of the corpus (unshuffled,
    a corpus listed folder by folder puts a whole kind of ham, such as hard-ham,
    in one fold that no model trained on).  The threshold sits just above the
    ham score that out-of-fold ham exceeds at most ``target_fp`` of the time,
    and never below ``unsure_edge``: out-of-fold ham says where familiar ham
    ends, not where unfamiliar ham does.
    """
    from sklearn.model_selection import StratifiedKFold  # here: see evaluate

    y = np.asarray(labels, dtype=bool)
    n_folds = min(CV_FOLDS, int(y.sum()), int((~y).sum()))
    ham_scores: list[float] = []
    if n_folds >= 2:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=FOLD_SEED)
        for train_idx, test_idx in folds.split(np.zeros(len(y)), y):
            model = Model.train([token_sets[int(i)] for i in train_idx], y[train_idx].tolist(), params)
            ham_scores.extend(model.score(token_sets[int(i)]).probability for i in test_idx if not y[i])
    floor = unsure_edge(params)
    if not ham_scores:
        return ThresholdChoice(floor, f"chi-square indicator {UNSURE_EDGE} (no out-of-fold ham to measure)",
                               ("no out-of-fold ham scores: the threshold is not measured",))
    ranked = sorted(ham_scores, reverse=True)
    allowed = int(len(ranked) * target_fp)
    above = ranked[allowed] if allowed < len(ranked) else 0.0
    measured = float(np.nextafter(above, 2.0))
    warnings: list[str] = []
    if allowed < 2:
        warnings.append(f"the out-of-fold estimate rests on the {allowed + 1} highest-scoring of "
                        f"{len(ranked)} ham: too few ham to measure an FP rate of {target_fp:.2%}")
    oof = (f"{n_folds}-fold out-of-fold ham: {allowed} of {len(ranked)} at or above "
           f"{measured:.6f} (target FP rate {target_fp:.2%})")
    if measured >= floor:
        return ThresholdChoice(measured, oof, tuple(warnings))
    return ThresholdChoice(floor, f"floor: chi-square indicator {UNSURE_EDGE}, the edge of the unsure "
                                  f"middle (above {oof})", tuple(warnings))


def corpus_warnings(token_sets: Sequence[set[str]], labels: Sequence[bool]) -> list[str]:
    """Why a training set may be too small or too narrow to trust its threshold."""
    out: list[str] = []
    for is_spam, name in ((False, "ham"), (True, "spam")):
        sets = [t for t, y in zip(token_sets, labels, strict=True) if y == is_spam]
        if len(sets) < MIN_PER_CLASS:
            out.append(f"only {len(sets)} {name} messages (fewer than {MIN_PER_CLASS}): "
                       "scores and threshold will be unreliable")
        senders = {t for tokens in sets for t in tokens if t.startswith("from:addr:")}
        if len(senders) < MIN_SENDERS:
            out.append(f"the {name} comes from {len(senders)} sender addresses (fewer than {MIN_SENDERS}): "
                       "too narrow to judge mail from elsewhere")
    return out


def training_set_digest(samples: Sequence[Sample]) -> str:
    digest = hashlib.sha256()
    for item in sorted(hashlib.sha256(s.raw).hexdigest() + ("s" if s.is_spam else "h")
                       for s in samples):
        digest.update(item.encode())
    return digest.hexdigest()


def train_model(samples: Sequence[Sample], holdout: float = 0.0,
                params: Params | None = None,
                progress: Callable[[Iterator[Sample]], Iterator[Sample]] | None = None,
                calibrate: bool = True) -> tuple[Model, Evaluation | None]:
    """Tokenize, fit, calibrate the threshold and (with a holdout) evaluate."""
    params = params or Params()
    train_sets: list[set[str]] = []
    train_labels: list[bool] = []
    held_sets: list[set[str]] = []
    held_labels: list[bool] = []
    train_samples: list[Sample] = []
    iterator: Iterator[Sample] = iter(samples)
    if progress is not None:
        iterator = progress(iterator)
    for sample in iterator:
        tokens = tokenize(sample.raw)
        if in_holdout(sample.source, holdout):
            held_sets.append(tokens)
            held_labels.append(sample.is_spam)
        else:
            train_sets.append(tokens)
            train_labels.append(sample.is_spam)
            train_samples.append(sample)
    if not train_sets:
        raise CorpusError("no messages to train on")
    if all(train_labels) or not any(train_labels):
        raise CorpusError("training needs both ham and spam; one class is missing")
    try:
        model = Model.train(train_sets, train_labels, params)
    except ModelError as exc:
        raise CorpusError(str(exc)) from exc
    warnings = corpus_warnings(train_sets, train_labels)
    if calibrate:
        choice = calibrate_threshold(train_sets, train_labels, params)
        model.passport.spam_threshold = choice.threshold
        model.passport.threshold_method = choice.method
        warnings.extend(choice.warnings)
    model.passport.warnings = warnings
    model.passport.training_set_sha256 = training_set_digest(train_samples)
    evaluation = None
    if held_sets and any(held_labels) and not all(held_labels):
        scores = [model.score(t).probability for t in held_sets]
        evaluation = evaluate(scores, held_labels, model.spam_threshold)
        model.passport.evaluation = evaluation.as_dict()
    return model, evaluation

