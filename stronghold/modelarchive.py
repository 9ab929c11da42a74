"""Models that were live before (``versions/NNNN-<version>/``, newest last), and which marks of the
learning ledger each model holds.

A model's passport names the ledger state its counts hold only by a hash (``ledger_sha256``).  To
roll back to a model, the ledger must learn again exactly which marks that model holds, so each
live model keeps them beside it: ``model.marks.json.gz`` (``{content hash: "s" | "h"}``), copied
into the archive with the model.  The file is trusted only if its marks hash to the passport's
``ledger_sha256``; a model that learned nothing needs none.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from stronghold import heldback
from stronghold.modelfile import (
    ModelError,
    atomic_file,
    check_file_is_trusted,
    passport_path,
    read_passport,
    sync_folder,
    table_path,
)
from stronghold.modelsync import version_of
from stronghold.store import ledger

log = logging.getLogger(__name__)
MARKS_SUFFIX = ".marks.json.gz"
DELETING = ".deleting-"  # an archive folder being deleted (no longer an archive: see _number)


def versions_dir(live: Path) -> Path:
    return live.parent / "versions"


def candidate_path(live: Path) -> Path:
    """The candidate beside the live model (``model.joblib`` -> ``candidate.joblib``)."""
    return live.with_name("candidate" + live.suffix)


def marks_path(model: Path) -> Path:
    return model.with_name(model.stem + MARKS_SUFFIX)


def write_marks(model: Path, marks: dict[str, bool]) -> None:
    """Record which marks the model at ``model`` holds (atomically and durably, as the model files
    are written; before its passport changes)."""
    data = json.dumps({h: "s" if s else "h" for h, s in sorted(marks.items())}).encode("utf-8")
    with atomic_file(marks_path(model), MARKS_SUFFIX) as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(data)


def read_marks(model: Path) -> dict[str, bool] | None:
    """The marks the model at ``model`` holds; None if not recorded (or not matching its passport)."""
    expected = read_passport(model).ledger_sha256
    if expected == "":
        return {}
    path = marks_path(model)
    if not path.exists():
        return None
    check_file_is_trusted(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            marks = {str(h): v == "s" for h, v in json.load(fh).items()}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("marks of %s unreadable: %s", model, exc)
        return None
    if ledger.digest(marks.items()) != expected:
        log.warning("%s does not match the passport of %s: not used", path, model)
        return None
    return marks


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model's files, each atomically and durably (its marks first, the passport last:
    readers see the old model or the new)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    names: list[Callable[[Path], Path]] = [Path, table_path, passport_path]
    if marks_path(src).exists():
        names.insert(0, marks_path)
    else:
        marks_path(dst).unlink(missing_ok=True)
    for name in names:
        with open(name(src), "rb") as fh, atomic_file(name(dst), ".copy") as out:
            shutil.copyfileobj(fh, out, 1 << 20)


def remove_model(model: Path) -> None:
    """Delete a model's files (the passport first: a reader sees no model, never half of one)."""
    for path in (passport_path(model), model, table_path(model), marks_path(model)):
        path.unlink(missing_ok=True)


def archive(live: Path, keep: int) -> Path:
    """Copy the live model into a new, newest ``versions/`` folder, then delete the oldest beyond
    the newest ``keep`` (``model_versions_kept``); returns the archived model."""
    folder = versions_dir(live)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [_number(p.name) for p in folder.iterdir() if p.is_dir()]
    number = max((n for n in numbers if n is not None), default=0) + 1
    name = f"{number:04d}-{version_of(read_passport(live))[:16]}"
    delete_folder(folder / (".new-" + name))  # left by an interrupted archiving
    dst = folder / (".new-" + name) / live.name  # not an archive until complete (see _number)
    copy_model(live, dst)
    sample = heldback.path_for(live)
    if sample.exists():  # a rollback across a retraining needs the restored model's own sample
        try:
            os.link(sample, heldback.path_for(dst))  # the live one is only ever replaced by a rename
        except OSError:  # a file system without hard links
            shutil.copyfile(sample, heldback.path_for(dst))
    os.replace(dst.parent, folder / name)
    sync_folder(folder)
    prune(live, keep)
    return folder / name / live.name


def prune(live: Path, keep: int) -> list[str]:
    """Delete the archived models older than the newest ``keep`` (at least one is kept); returns the
    names of the folders deleted.  Their marks then no longer hold ledger rows (``held_anywhere``)."""
    old = [model.parent for model in archived(live)][:-max(keep, 1)]
    for folder in old:
        delete_folder(folder)
        log.info("archived model %s deleted (model_versions_kept = %d)", folder.name, keep)
    return [folder.name for folder in old]


def delete_folder(folder: Path) -> None:
    """Delete an archive folder as a whole: renamed out of the archive first (one atomic step), then
    emptied; what an interrupted deletion left behind goes with the next one."""
    if folder.is_dir():
        os.replace(folder, folder.with_name(DELETING + folder.name))
    for left in folder.parent.glob(DELETING + "*"):
        shutil.rmtree(left)


def restore_sample(src: Path, live: Path) -> None:
    """Put the held-back sample archived with ``src`` (if any) back beside ``live``."""
    sample = heldback.path_for(src)
    if sample.exists():
        with open(sample, "rb") as fh, atomic_file(heldback.path_for(live), heldback.SUFFIX) as out:
            shutil.copyfileobj(fh, out, 1 << 20)


def archived(live: Path) -> list[Path]:
    """The archived models, oldest first."""
    folder = versions_dir(live)
    found = [p for p in folder.iterdir() if p.is_dir() and _number(p.name) is not None] if folder.exists() else []
    return [p / live.name for p in sorted(found, key=lambda p: (_number(p.name), p.name))]


def _number(name: str) -> int | None:
    """The archive number of a ``versions/`` folder (``0007-<version>``); None: not an archive."""
    head, dash, _ = name.partition("-")
    return int(head) if dash and head.isdigit() else None


def held_anywhere(live: Path) -> set[str]:
    """Content hashes held by the live model or an archived one (rows the ledger must keep, so
    that a rollback finds the features to take them out again).  A model whose marks are not
    recorded contributes nothing: it is refused as a rollback target anyway."""
    held: set[str] = set()
    for model in _models(live):
        try:
            held.update(read_marks(model) or ())
        except ModelError as exc:
            log.warning("archived model %s: %s", model, exc)
    return held


def _models(live: Path) -> Iterator[Path]:
    if passport_path(live).exists():
        yield live
    yield from archived(live)
