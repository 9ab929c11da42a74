"""The learning loop: feedback into the ledger, the ledger into a candidate model, the candidate
judged against the live model on a held-back set before it replaces it.

Files, all in the models folder (the only place models are loaded from):

- ``model.joblib`` (+ ``.npy``, ``.json``): the live model the milters score with;
- ``model.marks.json.gz``: which marks of the ledger the live model holds (``modelarchive``);
- ``candidate.joblib`` (+ ...): the live model plus everything the ledger holds now;
- ``model.heldback.json.gz``: a fixed sample of labelled corpus messages (their features), drawn
  by ``stronghold train`` for that model, that every candidate is scored on (``heldback``);
- ``versions/NNNN-<version>/``: models that were live before, newest last (``model rollback``);
- ``model.rollback.json``: only while a rollback runs, or after one was interrupted (``modelrollback``).

A promoted or rolled-back model is published in the store (``modelsync``), where every milter
node pulls it from.

The ledger (``store.ledger``) says what should be learned; ``sync`` moves a model's counts to
match it (adding, taking out, flipping) and records in the passport which ledger state the counts
hold, so a model and the ledger can never silently drift apart.  Learning is exact arithmetic on
whole counts: learn, learn again, flip and forget give the same files as learning the end result
once.

A rollback makes the ledger match the restored model again and sets aside the marks only the
rolled-back model had learned: the shared model keeps, for those messages, what the restored
model held until an operator readmits them (``learn --readmit``) or takes them out (``--forget-by``).
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stronghold import heldback, modelarchive, modelrollback, modelsync
from stronghold.classifier import Model
from stronghold.modelfile import ModelError, Passport, passport_path, read_passport, sha256_of
from stronghold.modelrollback import Rollback
from stronghold.store import ledger, modelversions
from stronghold.store.db import Store
from stronghold.store.messagelog import unpack_tokens
from stronghold.store.tables import LearnedMessage, ModelEvent

log = logging.getLogger(__name__)
# Most often another node learned for the shared database: learning on two nodes' own models
# folders moves the one ledger for both, and retraining a second node would take the marks out of
# the ledger the first one learns from.
LEDGER_MOVED_ON = ("{what} holds another state of the learning ledger than the store records: if another node "
                   "learns for this database, leave 'learn' to that one node (here: 'stronghold jobs --only "
                   "message-log --only quarantine --only digest --only junk'; the model reaches this node through "
                   "model_sync_seconds); {otherwise}")
FEEDBACK_DAYS = 30  # feedback changed within this many days joins the held-back set
FN_SLACK = 0.005  # a candidate may miss this much more of the held-back spam (never more ham)
# What one user's marks (web, IMAP moves, Junk) may put into the shared model: their first this many.
# The rest still shape their own personal layer.  One user marking 75 spam "not spam" had made the
# shared model miss 1.4% more of everyone's spam, within what the judge lets through.
SHARED_MARKS_PER_USER = 25
USER_SOURCES = ledger.USER_SOURCES  # marks by users; "cli" is the operator's own learning


def shared_labels(rows: Sequence[LearnedMessage], fresh: bool = False) -> dict[str, bool | None]:
    """{content hash: the label the shared model learns (None: not learned)} of ledger rows: each
    user's marks count up to ``SHARED_MARKS_PER_USER``, oldest first; the operator's all count.
    A set-aside mark keeps what the model holds for it (``applied``; nothing for a ``fresh``
    model, one just trained): it takes a place among its author's marks but is never cut.  A
    user's mark past the bound takes out only that user's own (``ledger.record`` lets no user mark
    override a mark of another author's that the model holds)."""
    counted: dict[str, int] = {}
    wanted: dict[str, bool | None] = {}
    for row in sorted(rows, key=lambda r: (r.created, r.content_hash)):
        frozen = row.set_aside and row.label is not None
        label = (None if fresh else row.applied) if frozen else row.label
        if label is not None and row.source in USER_SOURCES:
            counted[row.who] = counted.get(row.who, 0) + 1
            if counted[row.who] > SHARED_MARKS_PER_USER and not frozen:
                label = None
        wanted[row.content_hash] = label
    return wanted


def counted_marks(rows: Sequence[LearnedMessage]) -> list[LearnedMessage]:
    """The labelled rows whose label the shared model takes (``shared_labels``): a mark past its
    author's bound, or set aside, is not one of them."""
    wanted = shared_labels(rows)
    return [r for r in rows if r.label is not None and not r.set_aside and wanted[r.content_hash] == r.label]


candidate_path = modelarchive.candidate_path
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


@contextmanager
def locked(store: Store, live: Path) -> Iterator[Rollback | None]:
    """``model_lock``, and first of all a rollback that was interrupted finished (yielded; None: there
    was none), so that model and ledger are in step for whatever comes next."""
    with model_lock(live):
        yield modelrollback.finish(store, live)


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
            raise ModelError(LEDGER_MOVED_ON.format(
                what="the model", otherwise="if this models folder was restored from elsewhere, retrain it with "
                                            "'stronghold train'"))
        add: list[set[str]] = []
        add_labels: list[bool] = []
        remove: list[set[str]] = []
        remove_labels: list[bool] = []
        wanted = shared_labels(rows, fresh) if scope == ledger.SHARED else {r.content_hash: r.label for r in rows}
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
    cand_passport, live_passport = read_passport(cand), read_passport(live)
    version = version_of(cand_passport)
    if version == version_of(live_passport) or not same_base(cand_passport, live_passport):
        return False  # the live model, or one left from another training run (the next learn replaces it)
    with store.session() as session:
        return not modelversions.judged(session, version)


def judged_before(store: Store, live: Path) -> str:
    """Why the candidate (not awaiting judgement) is not judged: it is the live model, or a model
    judged before, with that judgement."""
    version = version_of(read_passport(candidate_path(live)))
    if version == version_of(read_passport(live)):
        return f"the candidate is the live model {version[:12]} again: nothing to judge"
    with store.session() as session:
        event = modelversions.latest_event(session, version, ("promoted", "held-back"))
        if event is None:  # grew from another training run: the next learn rebuilds it
            return f"candidate {version[:12]} left from another training run, not judged"
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event.ts))
        word = "held back" if event.action == "held-back" else "promoted"
    return (f"candidate {version[:12]} is a model {word} before ({when} UTC), not judged again "
            "('stronghold model promote' judges it anew)")


def update_candidate(store: Store, live: Path, save_unchanged: bool = True) -> tuple[Model, SyncResult]:
    """Bring the candidate up to the ledger and save it (call under ``model_lock``); with
    ``save_unchanged`` false, a candidate the ledger did not move is not written again."""
    modelrollback.finish(store, live)  # model and ledger in step first (``locked`` did it already)
    _note_live_marks(store, live)
    model = _open_or_rebuild_candidate(store, live)
    result, wanted = sync(store, model)
    if save_unchanged or result.added or result.removed:
        model.save(candidate_path(live))
    keep = modelarchive.held_anywhere(live)  # forgotten marks a rollback may need to take out again
    with store.session() as session:
        ledger.mark_applied(session, ledger.SHARED, wanted, keep)
    return model, result


def _open_or_rebuild_candidate(store: Store, live: Path) -> Model:
    """The candidate (``open_candidate``); one that is corrupt or was deleted is derived state, so
    it is rebuilt from the live model: its files go and the ledger's ``applied`` goes back to the
    marks the live model holds (as a rollback does, with nothing set aside), when those are recorded."""
    cand = candidate_path(live)
    try:
        model = open_candidate(live)
    except ModelError as exc:
        if not (cand.exists() or passport_path(cand).exists()):
            raise  # the live model's own trouble
        log.warning("the candidate %s is unusable (%s): rebuilt from the live model", cand, exc)
        modelarchive.remove_model(cand)
        model = Model.load(live, for_learning=True)
    if version_of(model.passport) != version_of(read_passport(live)) or not model.passport.ledger_sha256:
        return model  # a candidate, or a fresh live model (``sync`` starts it from nothing)
    marks = modelarchive.read_marks(live)
    with store.session() as session:
        if marks is None or ledger.digest(ledger.applied(session).items()) == model.passport.ledger_sha256:
            return model
        if ledger.missing(session, marks):
            return model  # ``sync`` refuses it: only a retraining helps
        ledger.restore(session, marks, {})
    log.warning("the ledger had moved past the live model %s with no candidate to show for it: "
                "brought back to what the live model holds", live)
    return model


def _note_live_marks(store: Store, live: Path) -> None:
    """A live model from before marks were recorded: write them down while the ledger still holds
    exactly its state (no candidate moved it since), so that it can be rolled back to later."""
    if modelarchive.read_marks(live) is not None:
        return
    with store.session() as session:
        marks = ledger.applied(session)
    if ledger.digest(marks.items()) == read_passport(live).ledger_sha256:
        modelarchive.write_marks(live, marks)


def archive_replaced(store: Store, live: Path, keep: int) -> Path | None:
    """Archive the live model a new training run is about to replace (call under ``model_lock``),
    with its marks and held-back sample, so that ``rollback`` returns to it; None (with a warning)
    when it cannot be rolled back to: its marks are not recorded and the ledger has moved on, or its
    files are unreadable.

    The ledger is left alone: a freshly trained model holds no marks (its passport says so), the
    next ``sync`` puts everything the ledger wants into its candidate, and a rollback to the archived
    model makes ``applied`` what that model holds again.  Marks set aside stay set aside across a
    retraining (a fresh model learns them only once readmitted)."""
    modelrollback.finish(store, live)
    try:
        _note_live_marks(store, live)
        if modelarchive.read_marks(live) is None:
            log.warning("the model %s replaced by training is not archived: it does not record which marks "
                        "of the learning ledger it holds, and the ledger has moved on since", live)
            return None
        archived = modelarchive.archive(live, keep)
    except ModelError as exc:
        log.warning("the model %s replaced by training is not archived: %s", live, exc)
        return None
    drop_unheld(store, live)
    return archived


def drop_unheld(store: Store, live: Path) -> None:
    """Delete the forgotten marks' ledger rows that no kept model holds any more (an archive pruned:
    nothing can roll back to a model that held them)."""
    keep = modelarchive.held_anywhere(live)
    with store.session() as session:
        ledger.mark_applied(session, ledger.SHARED, {}, keep)


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


def judge(candidate: Model, live: Model, sample: heldback.Sample, feedback: heldback.Sample) -> Judgement:
    """Promote only if the candidate is not worse at the live threshold: no more false positives on
    the fixed corpus sample (ham first), at most ``FN_SLACK`` more missed spam there, and no more
    errors on recent feedback."""
    threshold = live.spam_threshold
    c = tally(candidate, *sample, threshold)
    lv = tally(live, *sample, threshold)
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
    """The feedback part of the held-back set: marks changed in the last ``FEEDBACK_DAYS`` that the
    shared model takes (``counted_marks``).  A user's marks past their bound teach the shared model
    nothing, so they judge nothing either: they used to, and one user's hundreds of "not spam" on
    spam held back every candidate that learned other users' honest corrections."""
    since = (time.time() if now is None else now) - FEEDBACK_DAYS * 86400
    with store.session() as session:
        recent = {r.content_hash for r in ledger.recent(session, since)}
        rows = [r for r in counted_marks(ledger.rows(session)) if r.content_hash in recent]
        return [unpack_tokens(r.tokens) for r in rows], [bool(r.label) for r in rows]


def record_event(store: Store, action: str, version: str, who: str, reason: str) -> None:
    with store.session() as session:
        modelversions.record_event(session, action, version, who, reason)
    log.info("model %s %s by %s: %s", action, version[:12], who or "-", reason)


def events(store: Store, limit: int = 20) -> list[ModelEvent]:
    with store.session() as session:
        return modelversions.events(session, limit)


def load_candidate(cand: Path) -> Model:
    """The candidate model at ``cand``, its scoring table and its counts both matching its passport
    (promoted, its counts become the live model's, which every later ``learn`` goes on from);
    ModelError naming the fix when it is unusable (it is derived state: ``learn`` rebuilds it
    from the live model, no retraining needed)."""
    try:
        model = Model.load(cand)
        if sha256_of(cand) != model.passport.file_sha256:  # its counts, which ``learn`` goes on from
            raise ModelError(f"model {cand} does not match its passport (corrupt or replaced)")
        return model
    except ModelError as exc:
        raise ModelError(f"the candidate is unusable ({exc.args[0] if exc.args else exc}); "
                         "'stronghold learn' rebuilds it from the live model") from exc


def promote(store: Store, live: Path, who: str, force: bool = False, *, keep: int) -> Judgement:
    """Judge the candidate; if it is not worse (or ``force``), archive the live model (keeping the
    newest ``keep`` archived) and replace it."""
    modelrollback.finish(store, live)
    cand = candidate_path(live)
    if not cand.exists():
        raise ModelError("no candidate model: 'stronghold learn' builds one")
    candidate = load_candidate(cand)
    current = Model.load(live)
    if version_of(candidate.passport) == version_of(current.passport):
        return Judgement(False, "the candidate is the live model already")
    if not same_base(candidate.passport, current.passport):
        raise ModelError("the candidate grew from another training run than the live model (left from "
                         "before a 'train' or a rollback); 'stronghold learn' builds one from the live model")
    judgement = judge(candidate, current, heldback.read(live), recent_feedback(store))
    if not judgement.promote and not force:
        record_event(store, "held-back", version_of(candidate.passport), who, judgement.reason)
        return judgement
    _record_marks(store, cand)
    modelarchive.archive(live, keep)
    modelarchive.copy_model(cand, live)
    drop_unheld(store, live)
    modelsync.publish(store, live)
    reason = judgement.reason if judgement.promote else "forced by the administrator; " + judgement.reason
    record_event(store, "promoted", version_of(candidate.passport), who, reason)
    return Judgement(True, reason)


def _record_marks(store: Store, cand: Path) -> None:
    """Write beside the candidate which marks it holds (the ledger's applied state, checked against
    its passport), so that it can be rolled back to once it has been live."""
    if modelarchive.read_marks(cand) is not None:
        return
    with store.session() as session:
        marks = ledger.applied(session)
    if ledger.digest(marks.items()) != read_passport(cand).ledger_sha256:
        raise ModelError(LEDGER_MOVED_ON.format(what="the candidate",
                                                otherwise="otherwise 'stronghold learn' rebuilds it"))
    modelarchive.write_marks(cand, marks)


def readmit(store: Store, who: str | None, by: str) -> int:
    """Let set-aside marks (all, or those ``who`` gave) into the shared model again."""
    with store.session() as session:
        count = ledger.readmit(session, who)
        if count:
            modelversions.record_event(session, "readmitted", "", by,
                                       f"{count} set-aside mark(s)" + (f" by {who}" if who else ""))
    return count


def set_aside_count(store: Store) -> int:
    with store.session() as session:
        return ledger.set_aside_count(session)
