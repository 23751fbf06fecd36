"""Per-worker CPU isolation on the host: a lower scheduling priority and, where asked, CPU pinning.

A second line of defence only. The governor's pause is the mechanism that protects serving; these
make a worker that is still running (between heartbeats, or while the governor is unreachable) cost
serving less: ``os.nice`` lets serving threads win every contended core, and pinning keeps the
worker off cores the operator keeps for serving (``budget.pin_cpus``: host CPU ids reserved for
training on a shared node). Both are best effort: a host that does not allow them (no
``sched_setaffinity``, ids that do not exist in the worker's cgroup) leaves the worker unpinned,
and :func:`isolate` says so.

Imports nothing heavy: it runs first in a new worker process, before NumPy or torch load.
"""

from __future__ import annotations

import math
import os


def cpus_for_slot(slot: int, cpus_per_worker: float, pin_cpus: list[int], available: set[int]) -> set[int]:
    """The CPUs of ``pin_cpus`` that slot ``slot`` gets: ``ceil(cpus_per_worker)`` of them, dealt in
    turn from the list (slot 0 the first ones), limited to those the process may use."""
    usable = [c for c in pin_cpus if c in available]
    if not usable:
        return set()
    per = max(1, math.ceil(cpus_per_worker))
    start = (slot * per) % len(usable)
    return {usable[(start + i) % len(usable)] for i in range(min(per, len(usable)))}


def isolate(slot: int, nice: int, cpus_per_worker: float, pin_cpus: list[int] | None) -> dict:
    """Apply ``nice`` and the pinning to this process; returns what was done, for the worker's log."""
    done: dict = {"nice": None, "cpus": None, "note": None}
    if nice > 0 and hasattr(os, "nice"):
        done["nice"] = os.nice(nice)
    if pin_cpus:
        if not hasattr(os, "sched_setaffinity"):
            done["note"] = "CPU pinning not supported on this host"
            return done
        cpus = cpus_for_slot(slot, cpus_per_worker, pin_cpus, os.sched_getaffinity(0))
        if not cpus:
            done["note"] = f"none of budget.pin_cpus {pin_cpus} is usable here; not pinned"
            return done
        os.sched_setaffinity(0, cpus)
        done["cpus"] = sorted(cpus)
    return done
