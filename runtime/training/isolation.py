"""Per-worker CPU isolation on the host: a lower scheduling priority and, where asked, CPU pinning.

A second line of defence only. The governor's pause is the mechanism that protects serving; these
make training that is still running cost serving less. ``budget.worker_sched: idle`` (the default)
puts the thread in Linux's ``SCHED_IDLE`` class, which runs only on a CPU nothing else wants: a
waking serving thread preempts it at once. Measured here, a training loop beside a Ray Serve replica
at 60 % load: client p99 ~1.6x serving alone under ``SCHED_IDLE``, 2-3x under ``nice -n 19`` (Ray's
own workers, serving included, run at nice 15, so nice 19 still takes ~30 % of a shared core).
``os.nice`` (``budget.worker_nice``) applies on top, and on hosts without ``SCHED_IDLE``. Pinning
keeps the worker off cores the operator keeps for serving (``budget.pin_cpus``: host CPU ids
reserved for training on a shared node). All are best effort: a host that does not allow them (no
``sched_setaffinity``, ids that do not exist in the worker's cgroup) leaves the worker as it was,
and :func:`isolate` says so.

On Linux these are per thread: they hold for the thread that calls :func:`isolate` and for the
threads it starts afterwards (a BLAS pool, a directive feed), not for threads that exist already.

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


def isolate(slot: int, nice: int, cpus_per_worker: float, pin_cpus: list[int] | None, sched: str = "normal") -> dict:
    """Apply ``sched`` ("idle" or "normal"), ``nice`` and the pinning to the calling thread (and the
    threads it starts later); returns what was done, for the worker's log."""
    done: dict = {"nice": None, "cpus": None, "sched": "normal", "note": None}
    if sched == "idle":
        if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                done["sched"] = "idle"
            except OSError as exc:
                done["note"] = f"SCHED_IDLE refused ({exc}); nice only"
        else:
            done["note"] = "no SCHED_IDLE on this host; nice only"
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
