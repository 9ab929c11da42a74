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


def cpu_for(setting: str, slot: int, allowed: set[int], workers: int = 1, quota: float | None = None) -> int | None:
    """The CPU for worker ``slot`` (1, 2, ...) of ``workers`` among the CPUs this process may
    use, or None (leave it to the kernel): ``off``; a list naming none of them; ``auto``
    unless each worker can have a CPU of its own, that is with one CPU, with more workers
    than CPUs (pinned ones could not even out) or under a CPU quota smaller than the CPUs
    (a container limited to 2 CPUs of a big host sees them all: pinned, every node's
    workers would pile onto the first ones).  A list is taken as given, in turn."""
    if setting == "off":
        return None
    if setting == "auto":
        fits = 1 < len(allowed) and workers <= len(allowed) and (quota is None or quota >= len(allowed))
        cpus = sorted(allowed) if fits else []
    else:
        cpus = [int(part) for part in setting.split(",") if int(part) in allowed]
    if not cpus:
        return None
    return cpus[(slot - 1) % len(cpus)]


def cpu_quota(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """How many CPUs' worth of time this process's cgroup may use (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None: no quota, or none to be read."""
    try:
        with open(proc_cgroup) as lines:
            groups = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    for _, controllers, path in (g for g in groups if len(g) == 3):
        folder = path.lstrip("/")
        try:
            if controllers == "":  # v2
                with open(os.path.join(root, folder, "cpu.max")) as f:
                    quota, _, period = f.read().partition(" ")
                if quota.strip() != "max":
                    return int(quota) / int(period)
            elif "cpu" in controllers.split(","):  # v1
                base = os.path.join(root, controllers, folder)
                with open(os.path.join(base, "cpu.cfs_quota_us")) as f:
                    quota_us = int(f.read())
                with open(os.path.join(base, "cpu.cfs_period_us")) as f:
                    period_us = int(f.read())
                if quota_us > 0 and period_us > 0:
                    return quota_us / period_us
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


def pin_worker(setting: str, slot: int, workers: int = 1) -> int | None:
    """Keep this process (and the threads it starts from now on) on worker ``slot``'s CPU;
    returns that CPU, or None when the setting leaves the worker to the kernel."""
    allowed = os.sched_getaffinity(0)
    quota = cpu_quota() if setting == "auto" else None
    cpu = cpu_for(setting, slot, allowed, workers, quota)
    if cpu is None:
        if setting == "auto" and len(allowed) > 1:
            log.info("worker w%d left to the kernel: %d workers, %d CPUs%s", slot, workers, len(allowed),
                     f", a quota of {quota:g} CPUs" if quota is not None else "")
        elif setting != "off" and setting != "auto":
            log.warning("milter_cpu_affinity %s names none of the CPUs this process may use (%s); "
                        "worker w%d left to the kernel", setting, ",".join(map(str, sorted(allowed))), slot)
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning("worker w%d could not be kept on CPU %d: %s", slot, cpu, exc)
        return None
    return cpu
