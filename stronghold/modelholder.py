"""Model hot reload: the current classifier, swapped only for a file that loads and verifies."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stronghold.classifier import Model
from stronghold.incidents import Incidents
from stronghold.modelfile import ModelError, passport_path, table_path

log = logging.getLogger(__name__)


class ModelHolder:
    """The current model, reloaded when its file changes (or on request).

    A new file is loaded fully and verified before it replaces the old model,
    so no message is scored by a half-written one; a file that fails to load
    leaves the old model in place.
    """

    CHECK_SECONDS = 1.0

    def __init__(self, path: os.PathLike[str] | str, incidents: Incidents) -> None:
        self.path = Path(path)
        self.incidents = incidents
        self._model: Model | None = None
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._checked = -math.inf  # never: monotonic time can be small after boot
        self._lock = threading.Lock()
        self.generation = 0
        self.external_generation: Callable[[], int] | None = None  # bumped on SIGHUP
        self._seen_external = 0

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        """Identity of the passport and the table: a change in either means "look again"."""
        stamps = []
        for path in (passport_path(self.path), table_path(self.path)):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload(self) -> None:
        with self._lock:
            self._checked = -math.inf  # never: monotonic time can be small after boot
            self._stamp = None

    def __call__(self) -> Model:
        now = time.monotonic()
        with self._lock:
            if self.external_generation is not None:
                wanted = self.external_generation()
                if wanted != self._seen_external:
                    self._seen_external, self._checked, self._stamp = wanted, -math.inf, None
            if now - self._checked >= self.CHECK_SECONDS or self._model is None:
                self._checked = now
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    try:
                        model = Model.load(self.path)
                    except ModelError as exc:
                        self.incidents.failed("model", str(exc))
                        self._stamp = stamp  # do not retry this same broken file on every message
                        if self._model is None:
                            raise
                    else:
                        self._model, self._stamp = model, stamp
                        self.generation += 1
                        self.incidents.ok("model")
                        log.info("model loaded: %s (threshold %.4f, %d ham + %d spam)", self.path,
                                 model.spam_threshold, model.passport.trained_ham,
                                 model.passport.trained_spam)
            if self._model is None:
                raise ModelError(f"no usable model at {self.path}")
            return self._model
