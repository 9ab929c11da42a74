"""The held-back sample: a fixed set of labelled corpus messages (their features) that every
candidate of a model is judged on, drawn by ``stronghold train`` for the model it trained.

The sample belongs to one model: it is named after the model file (``model.joblib`` ->
``model.heldback.json.gz``), so a side model trained into the same folder keeps its own, and it
records the training run it was drawn from (``run``: the passport's training-set SHA-256, creation
time and training counts, which learning never changes).  A sample of another run is refused
with the reason, never used.  ``train`` writes the sample to a temporary name first, saves the
model, then renames the sample into place: an interruption between the two leaves the new model
beside the old sample, which the run check reports (train again).

Installs from before this layout have one ``heldback.json.gz`` per folder with no run record;
it is still read, with a warning, for a model that has no sample of its own.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from stronghold.modelfile import ModelError, Passport, check_file_is_trusted, read_passport, temp_name

log = logging.getLogger(__name__)
LEGACY_NAME = "heldback.json.gz"  # one per folder, written before samples were per model
SUFFIX = ".heldback.json.gz"
SIZE = 1000  # corpus messages kept for judging candidates (at most)
Sample = tuple[list[set[str]], list[bool]]


def path_for(model: Path) -> Path:
    """The sample of the model at ``model`` (``model.joblib`` -> ``model.heldback.json.gz``)."""
    return model.with_name(model.stem + SUFFIX)


def run_of(passport: Passport) -> dict[str, object]:
    """The training run a model grew from: the part of its passport that learning leaves alone."""
    return {"training_set_sha256": passport.training_set_sha256, "created": passport.created,
            "trained_ham": passport.trained_ham, "trained_spam": passport.trained_spam}


def prepare(model: Path, passport: Passport, token_sets: Sequence[set[str]], labels: Sequence[bool]) -> Path:
    """Write the sample of the model about to be saved at ``model`` to a temporary file beside it
    (features only, JSON: no pickle); ``commit`` moves it into place once the model is saved."""
    data = {"run": run_of(passport), "labels": [bool(x) for x in labels],
            "tokens": [sorted(t) for t in token_sets]}
    model.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(model, SUFFIX)
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            json.dump(data, fh)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(model: Path, tmp: Path) -> Path:
    path = path_for(model)
    os.replace(tmp, path)
    return path


def write(model: Path, passport: Passport, token_sets: Sequence[set[str]], labels: Sequence[bool]) -> Path:
    """The sample of the model already saved at ``model`` (whose passport is ``passport``)."""
    return commit(model, prepare(model, passport, token_sets, labels))


def read(model: Path) -> Sample:
    """The sample the candidates of the model at ``model`` are judged on, checked to belong to it."""
    path = path_for(model)
    legacy = model.with_name(LEGACY_NAME)
    if not path.exists():
        if not legacy.exists():
            raise ModelError(f"model {model} has no held-back sample ({path.name}) to judge a candidate on; "
                             f"'stronghold train --model {model}' writes it")
        log.warning("judging on %s, a folder-wide sample from before samples were per model: nothing checks "
                    "it was drawn for %s; train again to give the model its own (%s)", legacy, model.name, path.name)
        path = legacy
    check_file_is_trusted(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        labels = [bool(x) for x in data["labels"]]
        sets = [set(t) for t in data["tokens"]]
        run = data.get("run") if path != legacy else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"held-back sample {path} is unreadable: {exc}") from exc
    if path != legacy and run != run_of(read_passport(model)):
        raise ModelError(f"held-back sample {path} was drawn for another training run than model {model} "
                         "(a 'train' interrupted, or files copied from elsewhere?); not used: train again")
    if len(labels) != len(sets) or all(labels) or not any(labels):
        raise ModelError(f"held-back sample {path} needs both ham and spam")
    return sets, labels
