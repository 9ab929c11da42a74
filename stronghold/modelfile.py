"""A model's files and its passport: where they live, what they promise, whether to trust them.

A model is three files: ``model.joblib`` (the scikit-learn counts, needed to
learn), ``model.npy`` (the float32 log-odds table the filter scores with) and
``model.json`` (the ``Passport``: versions, counts, thresholds, figures, and the
SHA-256 of both).  This module names those files, reads the passport without
unpickling anything, refuses files that other users can write or that this
version cannot read, hashes files and replaces them atomically.  What goes
into the counts and the table is ``stronghold.classifier``'s business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from stronghold.tokens import TOKENIZER_VERSION

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: chi-square combining of token families (Params changed)
N_FEATURES = 2**22
DEFAULT_SPAM_THRESHOLD = 0.9


class ModelError(Exception):
    """A model is missing, corrupt, unsafe or incompatible (one-line message)."""


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


def passport_version(passport: Passport) -> str:
    """A model's version: the SHA-256 of its passport (which names the files' SHA-256 and holds
    the threshold), the same on every node that runs it."""
    return hashlib.sha256(json.dumps(asdict(passport), sort_keys=True).encode()).hexdigest()


def model_id(passport: Passport) -> str:
    """The short name people read: the first 12 digits of the version.  ``X-Stronghold-Version``,
    ``model info``, the model history and the ``stronghold_model_info`` metric all use it."""
    return passport_version(passport)[:12]


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


def temp_name(path: Path, suffix: str) -> Path:
    """A new empty file beside ``path`` (same file system, so ``os.replace`` is atomic)."""
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
        try:
            st = target.stat()
        except FileNotFoundError as exc:
            raise ModelError(f"model file {target} is missing; retrain with 'stronghold train'") from exc
        except OSError as exc:
            raise ModelError(f"model file {target} cannot be read: {exc.strerror}") from exc
        if st.st_uid not in (uid, 0):
            raise ModelError(f"refusing {target}: owned by uid {st.st_uid}, not by us or root")
        sticky_dir = target.is_dir() and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir:
            raise ModelError(f"refusing {target}: writable by other users (chmod go-w)")


def check_compatible(passport: Passport, path: Path, for_learning: bool) -> None:
    """Refuse a model this version cannot read (format, feature space; for learning, scikit-learn)."""
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


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Write ``path`` as a whole or not at all: the caller writes a temporary file beside it, which
    is then synced, made mode 0644, renamed onto ``path``, and the folder synced (so the rename
    survives a crash too).  On an error the temporary file goes and ``path`` is left as it was."""
    tmp = temp_name(path, suffix)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
        sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """Make the renames done in ``folder`` durable (fsync of the directory)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (``atomic_file``)."""
    with atomic_file(path, ".json") as fh:
        fh.write(text.encode("utf-8"))
