"""`model rollback`: the newest archived model made live again, the ledger following it, and the
marks only the rolled-back model had learned set aside (``stronghold.learning`` explains why).

A rollback changes files (live model, sample, candidate, archive) and the store (ledger, events,
published version): no single step can do both.  So it first writes down what it is about to do,
atomically, beside the live model (``model.rollback.json``: the archive it restores, that model's
version and marks, the marks of the model rolled back, who asked), then takes steps that can each
be taken again, and removes the record last.  A rollback the process did not live to finish (killed,
power lost) is finished by the next command that takes the model lock (``model rollback`` itself,
``learn``, ``jobs``, ``model promote``, ``train``) before it does anything else: never half done,
never done twice, never one version further back than asked.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stronghold import modelarchive, modelsync
from stronghold.classifier import Model
from stronghold.modelfile import ModelError, atomic_write_text, read_passport
from stronghold.store import ledger, modelversions
from stronghold.store.db import Store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
JOURNAL_SUFFIX = ".rollback.json"


@dataclass(frozen=True)
class Rollback:
    version: str  # the model live again
    restored: str  # the archive it came from
    set_aside: int | None  # marks newly set aside (None: counted by the run that was interrupted)
    resumed: bool = False  # finished a rollback an earlier run had begun


@dataclass(frozen=True)
class _Plan:
    """What a rollback is about to do (written before its first step, removed after its last)."""

    archive: str  # the versions/ folder restored
    version: str  # the restored model's version
    restored: dict[str, bool]  # marks the restored model holds
    rolled: dict[str, bool]  # marks the rolled-back model held
    who: str
    started: float


def journal_path(live: Path) -> Path:
    return live.with_name(live.stem + JOURNAL_SUFFIX)


def pending(live: Path) -> str | None:
    """The archive an interrupted rollback is restoring (None: no rollback was interrupted)."""
    plan = _read_plan(live)
    return None if plan is None else plan.archive


def rollback(store: Store, live: Path, who: str) -> Rollback:
    """Make the newest archived model live again (call under ``learning.model_lock``); if a rollback
    was interrupted, finish that one instead (``resumed``)."""
    unfinished = finish(store, live)
    if unfinished is not None:
        return unfinished
    versions = modelarchive.archived(live)
    if not versions:
        raise ModelError("no earlier model to roll back to")
    src = versions[-1]
    name = src.parent.name
    Model.load(src)  # refuse a damaged archive before touching the live model
    restored = modelarchive.read_marks(src)
    if restored is None:
        raise ModelError(f"the archived model {name} does not record which marks of the learning ledger it "
                         "holds (archived by an older version): rolling back to it would leave model and "
                         "ledger apart; train a new model with 'stronghold train' instead")
    rolled = modelarchive.read_marks(live)
    with store.session() as session:
        if rolled is None:  # a live model from before marks were recorded: its candidate's state instead
            log.warning("the live model does not record its marks; setting aside what its candidate holds")
            rolled = ledger.applied(session)
        _check_ledger_has(session, name, restored)
    plan = _Plan(name, modelsync.version_of(read_passport(src)), restored, rolled, who, time.time())
    atomic_write_text(journal_path(live), json.dumps(asdict(plan)))
    return _complete(store, live, plan, resumed=False)


def finish(store: Store, live: Path) -> Rollback | None:
    """Finish a rollback that was interrupted (call under the model lock); None if there is none."""
    plan = _read_plan(live)
    if plan is None:
        return None
    log.warning("finishing the 'model rollback' to %s begun at %s and interrupted", plan.archive,
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(plan.started)))
    return _complete(store, live, plan, resumed=True)


def _complete(store: Store, live: Path, plan: _Plan, resumed: bool) -> Rollback:
    """Each step may be taken again: the files copied anew while the archive is there, the store
    changed only if this rollback's event is not recorded yet (in the same transaction)."""
    src = modelarchive.versions_dir(live) / plan.archive / live.name
    if src.parent.is_dir():
        modelarchive.remove_model(modelarchive.candidate_path(live))  # grew from the rolled-back model
        modelarchive.restore_sample(src, live)
        modelarchive.copy_model(src, live)
    elif modelsync.version_of(read_passport(live)) != plan.version:
        raise ModelError(f"an interrupted 'model rollback' to {plan.archive} cannot be finished: the archived "
                         f"model is gone and the live model is another; restore {src.parent} from a backup "
                         f"and run 'stronghold model rollback', or train a new model and delete {journal_path(live)}")
    aside: int | None = None
    with store.session() as session:
        if not _recorded(session, plan):
            _check_ledger_has(session, plan.archive, plan.restored)
            aside = ledger.restore(session, plan.restored,
                                   {h: s for h, s in plan.rolled.items() if plan.restored.get(h) != s})
            modelversions.record_event(session, "rolled-back", plan.version, plan.who,
                                       f"restored {plan.archive}; {aside} mark(s) set aside")
    modelsync.publish(store, live)
    modelarchive.delete_folder(src.parent)  # last: until then the files can be copied again
    journal_path(live).unlink(missing_ok=True)
    log.info("model rolled-back to %s by %s%s", plan.version[:12], plan.who or "-",
             "" if aside is None else f": {aside} mark(s) set aside")
    return Rollback(plan.version, plan.archive, aside, resumed)


def _check_ledger_has(session: Session, name: str, restored: dict[str, bool]) -> None:
    gone = ledger.missing(session, restored)
    if gone:
        raise ModelError(f"the archived model {name} holds {len(gone)} mark(s) the learning ledger no "
                         "longer has (cannot be taken out later); train a new model instead")


def _recorded(session: Session, plan: _Plan) -> bool:
    """Did the interrupted run commit its store step (the event is written in the same transaction)?"""
    event = modelversions.latest_event(session, plan.version, ("rolled-back",))
    return event is not None and event.ts >= plan.started and event.reason.startswith(f"restored {plan.archive};")


def _read_plan(live: Path) -> _Plan | None:
    path = journal_path(live)
    try:
        data = json.loads(path.read_text())
        return _Plan(str(data["archive"]), str(data["version"]),
                     {str(h): bool(s) for h, s in data["restored"].items()},
                     {str(h): bool(s) for h, s in data["rolled"].items()}, str(data["who"]), float(data["started"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"the record of an interrupted 'model rollback' ({path}) is unreadable ({exc}); "
                         "compare the live model with versions/ and delete it") from None
