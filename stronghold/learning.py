"""The learning loop: feedback into the ledger, the ledger into a candidate model, the candidate
judged against the live model on a held-back set before it replaces it.

Files, all in the models folder (the only place models are loaded from):

- ``model.joblib`` (+ ``.npy``, ``.json``): the live model the milters score with;
- ``candidate.joblib`` (+ ...): the live model plus everything the ledger holds now;
- ``heldback.json.gz``: a fixed sample of labelled corpus messages (their features), written by
  ``stronghold train``, that every candidate is scored on;
- ``versions/NNNN-<table sha>/``: models that were live before, newest last (``model rollback``).

A promoted or rolled-back model is published in the store (``modelsync``), where every milter
node pulls it from.

The ledger (``store.ledger``) says what should be learned; ``sync`` moves a model's counts to
match it (adding, taking out, flipping) and records in the passport which ledger state the counts
hold, so a model and the ledger can never silently drift apart.  Learning is exact arithmetic on
whole counts: learn, learn again, flip and forget give the same files as learning the end result
once.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stronghold import modelsync
from stronghold.classifier import Model
from stronghold.modelfile import ModelError, Passport, check_file_is_trusted, passport_path, read_passport, table_path
from stronghold.store import ledger, modelversions
from stronghold.store.db import Store
from stronghold.store.messagelog import unpack_tokens
from stronghold.store.tables import LearnedMessage, ModelEvent

log = logging.getLogger(__name__)
HELDBACK_NAME = "heldback.json.gz"
HELDBACK_SIZE = 1000  # corpus messages kept for judging candidates (at most)
FEEDBACK_DAYS = 30  # feedback changed within this many days joins the held-back set
FN_SLACK = 0.005  # a candidate may miss this much more of the held-back spam (never more ham)
# What one user's marks (web, IMAP moves, Junk) may put into the shared model: their first this many.
# The rest still shape their own personal layer.  One user marking 75 spam "not spam" had made the
# shared model miss 1.4% more of everyone's spam, within what the judge lets through.
SHARED_MARKS_PER_USER = 25
USER_SOURCES = ("web", "imap", "junk")  # marks by users; "cli" is the operator's own learning


def shared_labels(rows: Sequence[LearnedMessage]) -> dict[str, bool | None]:
    """{content hash: the label the shared model learns (None: not learned)} of ledger rows: each
    user's marks count up to ``SHARED_MARKS_PER_USER``, oldest first; the operator's all count."""
    counted: dict[str, int] = {}
    wanted: dict[str, bool | None] = {}
    for row in sorted(rows, key=lambda r: (r.created, r.content_hash)):
        label = row.label
        if label is not None and row.source in USER_SOURCES:
            counted[row.who] = counted.get(row.who, 0) + 1
            if counted[row.who] > SHARED_MARKS_PER_USER:
                label = None
        wanted[row.content_hash] = label
    return wanted


def candidate_path(live: Path) -> Path:
    return live.with_name("candidate" + live.suffix)


def heldback_path(live: Path) -> Path:
    return live.with_name(HELDBACK_NAME)


def versions_dir(live: Path) -> Path:
    return live.parent / "versions"


version_of = modelsync.version_of  # a model's version: the SHA-256 of its passport


def same_base(a: Passport, b: Passport) -> bool:
    """Both models grew from the same training run."""
    return (a.training_set_sha256, a.created, a.trained_ham, a.trained_spam) == \
        (b.training_set_sha256, b.created, b.trained_ham, b.trained_spam)


@contextmanager
def model_lock(live: Path) -> Iterator[None]:
    """One learner at a time per models folder (a sync reads and writes model and ledger)."""
    live.parent.mkdir(parents=True, exist_ok=True)
    with open(live.parent / ".learn.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- ledger -> model ------------------------------------------------------------------

@dataclass(frozen=True)
class SyncResult:
    added: int
    removed: int


def sync(store: Store, model: Model, scope: str = ledger.SHARED) -> tuple[SyncResult, dict[str, bool | None]]:
    """Move ``model``'s counts to what the ledger wants; returns what moved and the state to mark
    applied once the model is saved (``ledger.mark_applied``)."""
    with store.session() as session:
        rows = ledger.rows(session, scope)
        held = ledger.digest((r.content_hash, bool(r.applied)) for r in rows if r.applied is not None)
        fresh = model.passport.ledger_sha256 == "" and held != ""
        if model.passport.ledger_sha256 != held and not fresh:
            raise ModelError("the model holds another state of the learning ledger than the store "
                             "records (restored from elsewhere?); retrain it with 'stronghold train'")
        add: list[set[str]] = []
        add_labels: list[bool] = []
        remove: list[set[str]] = []
        remove_labels: list[bool] = []
        wanted = shared_labels(rows) if scope == ledger.SHARED else {r.content_hash: r.label for r in rows}
        for row in rows:
            current = None if fresh else row.applied
            label = wanted[row.content_hash]
            if current == label:
                continue
            tokens = unpack_tokens(row.tokens)
            if current is not None:
                remove.append(tokens)
                remove_labels.append(current)
            if label is not None:
                add.append(tokens)
                add_labels.append(label)
    model.adjust(add, add_labels, remove, remove_labels)
    model.passport.ledger_sha256 = ledger.digest((h, s) for h, s in wanted.items() if s is not None)
    return SyncResult(len(add), len(remove)), wanted


def open_candidate(live: Path) -> Model:
    """The candidate if it grew from the live model's training run, else a fresh copy of the live one."""
    live_passport = read_passport(live)
    cand = candidate_path(live)
    if cand.exists() and same_base(read_passport(cand), live_passport):
        return Model.load(cand, for_learning=True)
    return Model.load(live, for_learning=True)


def awaits_judgement(store: Store, live: Path) -> bool:
    """A candidate that differs from the live model and was never promoted or held back
    (built by a run whose judging failed, or with ``--no-promote``)."""
    cand = candidate_path(live)
    if not cand.exists():
        return False
    version = version_of(read_passport(cand))
    if version == version_of(read_passport(live)):
        return False
    with store.session() as session:
        return not modelversions.judged(session, version)


def update_candidate(store: Store, live: Path, save_unchanged: bool = True) -> tuple[Model, SyncResult]:
    """Bring the candidate up to the ledger and save it (call under ``model_lock``); with
    ``save_unchanged`` false, a candidate the ledger did not move is not written again."""
    model = open_candidate(live)
    result, wanted = sync(store, model)
    if save_unchanged or result.added or result.removed:
        model.save(candidate_path(live))
    with store.session() as session:
        ledger.mark_applied(session, ledger.SHARED, wanted)
    return model, result


# -- judging and promotion -------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    fp: int
    n_ham: int
    fn: int
    n_spam: int

    def text(self) -> str:
        return f"FP {self.fp}/{self.n_ham}, FN {self.fn}/{self.n_spam}"


def tally(model: Model, token_sets: Sequence[set[str]], labels: Sequence[bool], threshold: float) -> Tally:
    fp = fn = n_spam = 0
    for tokens, is_spam in zip(token_sets, labels, strict=True):
        spam = model.score(tokens).probability >= threshold
        n_spam += is_spam
        fp += spam and not is_spam
        fn += is_spam and not spam
    return Tally(fp, len(labels) - n_spam, fn, n_spam)


@dataclass(frozen=True)
class Judgement:
    promote: bool
    reason: str


def write_heldback(live: Path, token_sets: Sequence[set[str]], labels: Sequence[bool]) -> Path:
    """Save the fixed corpus sample candidates are judged on (features only, JSON: no pickle)."""
    path = heldback_path(live)
    data = {"labels": [bool(x) for x in labels], "tokens": [sorted(t) for t in token_sets]}
    tmp = path.with_name(".tmp-" + path.name)
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        json.dump(data, fh)
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def read_heldback(live: Path) -> tuple[list[set[str]], list[bool]]:
    path = heldback_path(live)
    if not path.exists():
        raise ModelError(f"no held-back sample {path} to judge a candidate on; 'stronghold train' writes it")
    check_file_is_trusted(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        labels = [bool(x) for x in data["labels"]]
        sets = [set(t) for t in data["tokens"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"held-back sample {path} is unreadable: {exc}") from exc
    if len(labels) != len(sets) or all(labels) or not any(labels):
        raise ModelError(f"held-back sample {path} needs both ham and spam")
    return sets, labels


def judge(candidate: Model, live: Model, heldback: tuple[list[set[str]], list[bool]],
          feedback: tuple[list[set[str]], list[bool]]) -> Judgement:
    """Promote only if the candidate is not worse at the live threshold: no more false positives on
    the fixed corpus sample (ham first), at most ``FN_SLACK`` more missed spam there, and no more
    errors on recent feedback."""
    threshold = live.spam_threshold
    c = tally(candidate, *heldback, threshold)
    lv = tally(live, *heldback, threshold)
    parts = [f"corpus sample at threshold {threshold:.4f}: live {lv.text()}, candidate {c.text()}"]
    verdict = True
    if c.fp > lv.fp:
        verdict = False
        parts.append("more false positives on the corpus sample")
    elif c.fn > lv.fn + max(1, int(FN_SLACK * c.n_spam)):
        verdict = False
        parts.append("misses more spam of the corpus sample")
    if feedback[0]:
        cf = tally(candidate, *feedback, threshold)
        lf = tally(live, *feedback, threshold)
        parts.append(f"recent feedback: live {lf.text()}, candidate {cf.text()}")
        if verdict and (cf.fp, cf.fp + cf.fn) > (lf.fp, lf.fp + lf.fn):
            verdict = False
            parts.append("more errors on recent feedback")
    return Judgement(verdict, "; ".join(parts))


def recent_feedback(store: Store, now: float | None = None) -> tuple[list[set[str]], list[bool]]:
    since = (time.time() if now is None else now) - FEEDBACK_DAYS * 86400
    with store.session() as session:
        rows = ledger.recent(session, since)
        return [unpack_tokens(r.tokens) for r in rows], [bool(r.label) for r in rows]


def record_event(store: Store, action: str, version: str, who: str, reason: str) -> None:
    with store.session() as session:
        modelversions.record_event(session, action, version, who, reason)
    log.info("model %s %s by %s: %s", action, version[:12], who or "-", reason)


def events(store: Store, limit: int = 20) -> list[ModelEvent]:
    with store.session() as session:
        return modelversions.events(session, limit)


_FILES = (lambda p: p, table_path, passport_path)


def _copy_model(src: Path, dst: Path) -> None:
    """Copy a model's three files; the passport last, so readers see the old model or the new one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        tmp = name(dst).with_name(".tmp-" + name(dst).name)
        shutil.copyfile(name(src), tmp)
        tmp.chmod(0o644)
        tmp.replace(name(dst))


def _archive(live: Path) -> Path:
    folder = versions_dir(live)
    folder.mkdir(parents=True, exist_ok=True)
    taken = sorted(p.name for p in folder.iterdir() if p.is_dir())
    number = int(taken[-1].split("-", 1)[0]) + 1 if taken else 1
    dst = folder / f"{number:04d}-{version_of(read_passport(live))[:16]}" / live.name
    _copy_model(live, dst)
    return dst


def promote(store: Store, live: Path, who: str, force: bool = False) -> Judgement:
    """Judge the candidate; if it is not worse (or ``force``), archive the live model and replace it."""
    cand = candidate_path(live)
    if not cand.exists():
        raise ModelError("no candidate model: 'stronghold learn' builds one")
    candidate = Model.load(cand)
    current = Model.load(live)
    if version_of(candidate.passport) == version_of(current.passport):
        return Judgement(False, "the candidate is the live model already")
    judgement = judge(candidate, current, read_heldback(live), recent_feedback(store))
    if not judgement.promote and not force:
        record_event(store, "held-back", version_of(candidate.passport), who, judgement.reason)
        return judgement
    _archive(live)
    _copy_model(cand, live)
    modelsync.publish(store, live)
    reason = judgement.reason if judgement.promote else "forced by the administrator; " + judgement.reason
    record_event(store, "promoted", version_of(candidate.passport), who, reason)
    return Judgement(True, reason)


def rollback(store: Store, live: Path, who: str) -> str:
    """Make the newest archived model live again (it leaves the archive); returns its version."""
    folder = versions_dir(live)
    archived = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    if not archived:
        raise ModelError("no earlier model to roll back to")
    src = archived[-1] / live.name
    Model.load(src)  # refuse a damaged archive before touching the live model
    _copy_model(src, live)
    version = version_of(read_passport(live))
    shutil.rmtree(archived[-1])
    modelsync.publish(store, live)
    record_event(store, "rolled-back", version, who, f"restored {archived[-1].name}")
    return version
