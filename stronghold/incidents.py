"""Once-per-incident logging: a failing dependency is logged when it starts failing and when it recovers."""

from __future__ import annotations

import logging
import threading
import time

from stronghold import metrics
from stronghold.metrics import Recorder

log = logging.getLogger(__name__)


class Incidents:
    """Log a failing dependency once when it starts failing and once when it recovers."""

    REMIND_SECONDS = 300.0

    def __init__(self) -> None:
        self._failing: dict[str, float] = {}
        self._lock = threading.Lock()
        self.recorder: Recorder = metrics.NULL

    def failed(self, kind: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._failing.get(kind)
            self.recorder.incident(kind, started=last is None)
            if last is None or now - last > self.REMIND_SECONDS:
                log.error("%s failing: %s", kind, detail)
                self._failing[kind] = now

    def ok(self, kind: str) -> None:
        with self._lock:
            if self._failing.pop(kind, None) is not None:
                log.warning("%s recovered", kind)
                self.recorder.recovered(kind)
