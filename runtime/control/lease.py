"""A job's lease on the training pool: one placement group per worker slot.

Ray cannot resize a placement group in place, so a lease grows by creating groups and shrinks by
removing them. Giving a slot back is two-phase so that no worker is killed with unsaved work: the slot
first *drains* (its worker is told to stop, returns its progress and the job checkpoints it), then
it is removed — or, when the whole job is paused, *parked*: the worker is stopped and holds no CPU,
but its group and its warm process stay for ``park_s``, so a resume soon after skips a cold start
(process launch and imports cost seconds of CPU, which would land on the serving side exactly when
headroom has just come back). A parked slot is removed when the pause outlasts ``park_s``; a
draining slot whose worker never reports back is removed after ``drain_timeout_s``; and a running slot
whose worker has not been heard from (no heartbeat: a process stopped, frozen or wedged with the
interpreter held) for ``hung_s`` is removed too, which ends its worker, so that a fresh group and a
fresh worker take its place instead of the job waiting on it for good. A worker whose training thread
blocks while its heartbeat thread still runs is not seen by this: its heartbeats keep coming.

Every group asks for ``{"CPU": cpus_per_worker, "training_pool": 1}``, so training only ever lands on
nodes that carry the ``training_pool`` resource.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

POOL_RESOURCE = "training_pool"


@dataclass
class Slot:
    pg: PlacementGroup
    created_s: float
    ready: bool = False
    draining_since_s: float | None = None
    parked_since_s: float | None = None
    heard_s: float | None = None  # its worker's last heartbeat (None: none heard since the group was ready)

    @property
    def active(self) -> bool:
        """A worker may be computing in it (running, or told to stop but not yet stopped)."""
        return self.ready and self.parked_since_s is None


@dataclass
class Lease:
    job: str
    bundle: dict[str, float]
    drain_timeout_s: float = 10.0
    park_s: float = 30.0
    hung_s: float = 0.0  # a running slot whose worker is not heard from this long is removed (0: never)
    slots: dict[int, Slot] = field(default_factory=dict)
    target: int = 0

    def resize(self, workers: int, now_s: float) -> None:
        """Move toward ``workers`` running slots."""
        self.target = workers
        for idx in range(workers):
            slot = self.slots.get(idx)
            if slot is None:
                # detached: a group owned by the governor's process would die with it, workers and all
                pg = placement_group([dict(self.bundle)], strategy="PACK", name=f"headroom-{self.job}-{idx}",
                                     lifetime="detached")
                self.slots[idx] = Slot(pg, now_s)
            elif slot.parked_since_s is not None:
                slot.parked_since_s = None  # warm resume: the worker process is still there (and heard while parked)
        for idx, slot in list(self.slots.items()):
            if idx < workers or slot.parked_since_s is not None:
                continue
            if not slot.ready:  # nothing runs in it yet: remove at once
                self._remove(idx)
            elif slot.draining_since_s is None:
                slot.draining_since_s = now_s

    def poll_ready(self) -> None:
        """Mark groups whose resources have been reserved (non-blocking)."""
        pending = {s.pg.ready(): s for s in self.slots.values() if not s.ready}
        if pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                pending[ref].ready = True
                pending[ref].heard_s = None  # a fresh group: no worker of its own heard yet

    def should_run(self, idx: int) -> bool:
        slot = self.slots.get(idx)
        return slot is not None and slot.active and slot.draining_since_s is None

    def release(self, idx: int, now_s: float, *, park: bool) -> str:
        """The worker in ``idx`` stopped. Returns what became of the slot: kept, parked, removed, running, unknown."""
        slot = self.slots.get(idx)
        if slot is None:
            return "unknown"
        if slot.draining_since_s is None:
            return "running" if slot.parked_since_s is None else "parked"
        slot.draining_since_s = None
        if idx < self.target:
            return "kept"  # wanted again since the drain began
        if park:
            slot.parked_since_s = now_s
            return "parked"
        self._remove(idx)
        return "removed"

    def expire(self, now_s: float) -> list[int]:
        """Remove slots parked longer than ``park_s`` and drains that never reported back."""
        late = [i for i, s in self.slots.items()
                if (s.draining_since_s is not None and now_s - s.draining_since_s > self.drain_timeout_s)
                or (s.parked_since_s is not None and now_s - s.parked_since_s > self.park_s)]
        for idx in late:
            self._remove(idx)
        return late

    def heard(self, idx: int, now_s: float) -> None:
        """The worker in ``idx`` sent a heartbeat."""
        slot = self.slots.get(idx)
        if slot is not None:
            slot.heard_s = now_s

    def hung(self, now_s: float) -> list[int]:
        """Remove running slots whose worker, once heard, has been silent for ``hung_s``; returns them.
        A slot no worker of its own has been heard from yet is not judged: the driver starts a worker in
        a new slot only between rounds, and a fresh worker's process start and imports take seconds. A
        parked worker keeps sending heartbeats, so a warm resume is judged from its last one."""
        if not self.hung_s:
            return []
        late = [idx for idx, slot in self.slots.items()
                if self.should_run(idx) and slot.heard_s is not None and now_s - slot.heard_s > self.hung_s]
        for idx in late:
            self._remove(idx)
        return late

    def restart_clocks(self, now_s: float) -> None:
        """Every heard slot's clock starts again at ``now_s`` (the caller stalled: heartbeats may be
        queued behind it)."""
        for slot in self.slots.values():
            if slot.heard_s is not None:
                slot.heard_s = now_s

    def view(self) -> dict:
        """What the job driver needs: ready groups to run in, and the slots draining or parked."""
        return {"ready": {i: s.pg for i, s in self.slots.items() if self.should_run(i)},
                "draining": sorted(i for i, s in self.slots.items() if s.draining_since_s is not None),
                "parked": sorted(i for i, s in self.slots.items() if s.parked_since_s is not None)}

    def active_slots(self) -> set[int]:
        return {i for i, s in self.slots.items() if s.active}

    def active_count(self) -> int:
        return len(self.active_slots())

    def release_all(self) -> None:
        for idx in list(self.slots):
            self._remove(idx)

    def _remove(self, idx: int) -> None:
        slot = self.slots.pop(idx)
        try:
            remove_placement_group(slot.pg)
        except Exception:  # already gone (node lost, cluster restarted): nothing left to free
            pass

    def __len__(self) -> int:
        return len(self.slots)
