"""Which CPU a milter worker runs on (``milter_cpu_affinity``).

A worker's connection threads take turns holding one GIL.  Left to the kernel, the
threads of one worker spread over every core, and each hand-over of the GIL then
moves the running thread's data from one core's caches to another's and wakes a
sleeping core: in one process fed eight connections at once that costs ~40 % more
CPU per message than one connection does.  A worker kept on one core hands the GIL
over inside that core's caches.  Each worker gets its own core; Postfix, clamd and
everything else are left to the kernel, which moves them to where there is room.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def cpu_for(setting: str, slot: int, allowed: set[int]) -> int | None:
    """The CPU for worker ``slot`` (1, 2, ...) among the CPUs this process may use, or None
    (leave it to the kernel): ``off``; ``auto`` with one CPU allowed; a list naming none of them.
    Slots take the CPUs in turn, so more workers than CPUs share them evenly."""
    if setting == "off":
        return None
    if setting == "auto":
        cpus = sorted(allowed) if len(allowed) > 1 else []
    else:
        cpus = [int(part) for part in setting.split(",") if int(part) in allowed]
    if not cpus:
        return None
    return cpus[(slot - 1) % len(cpus)]


def pin_worker(setting: str, slot: int) -> int | None:
    """Keep this process (and the threads it starts from now on) on worker ``slot``'s CPU;
    returns that CPU, or None when the setting leaves the worker to the kernel."""
    allowed = os.sched_getaffinity(0)
    cpu = cpu_for(setting, slot, allowed)
    if cpu is None:
        if setting not in ("auto", "off"):
            log.warning("milter_cpu_affinity %s names none of the CPUs this process may use (%s); "
                        "worker w%d left to the kernel", setting, ",".join(map(str, sorted(allowed))), slot)
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning("worker w%d could not be kept on CPU %d: %s", slot, cpu, exc)
        return None
    return cpu
