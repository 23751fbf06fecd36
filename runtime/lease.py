"""A job's lease on the training pool: one placement group per worker slot.

Ray cannot resize a placement group in place, so a lease grows by creating groups and shrinks by
removing them. Shrinking is two-phase so that no worker is killed with unsaved work: a slot first
*drains* (its worker is told to stop, returns its progress, and the job reports it released), then
its group is removed; a slot whose worker never reports back is removed after ``drain_timeout_s``.

Every group asks for ``{"CPU": cpus_per_worker, "training_pool": 1}``, so training only ever lands on
nodes that carry the ``training_pool`` resource.

>>> lease = Lease("job-a", {"CPU": 1, "training_pool": 1})  # doctest: +SKIP
>>> lease.resize(2, now_s=0.0)
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


@dataclass
class Lease:
    job: str
    bundle: dict[str, float]
    drain_timeout_s: float = 10.0
    slots: dict[int, Slot] = field(default_factory=dict)

    def resize(self, workers: int, now_s: float) -> list[int]:
        """Move toward ``workers`` slots; returns the slots released outright (never-ready ones)."""
        released = []
        for idx in range(workers):
            if idx not in self.slots:  # a draining slot finishes its drain first, then comes back
                pg = placement_group([dict(self.bundle)], strategy="PACK", name=f"headroom-{self.job}-{idx}")
                self.slots[idx] = Slot(pg, now_s)
        for idx, slot in list(self.slots.items()):
            if idx < workers:
                continue
            if not slot.ready:  # nothing runs in it yet: remove at once
                self._remove(idx)
                released.append(idx)
            elif slot.draining_since_s is None:
                slot.draining_since_s = now_s
        return released

    def poll_ready(self) -> None:
        """Mark groups whose resources have been reserved (non-blocking)."""
        pending = {s.pg.ready(): s for s in self.slots.values() if not s.ready}
        if pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                pending[ref].ready = True

    def should_run(self, idx: int) -> bool:
        slot = self.slots.get(idx)
        return slot is not None and slot.ready and slot.draining_since_s is None

    def release(self, idx: int) -> bool:
        """The worker in ``idx`` has stopped: remove its group if the slot is draining."""
        slot = self.slots.get(idx)
        if slot is None or slot.draining_since_s is None:
            return False
        self._remove(idx)
        return True

    def expire_drains(self, now_s: float) -> list[int]:
        """Remove draining slots whose worker did not report back in time."""
        late = [i for i, s in self.slots.items() if s.draining_since_s is not None and now_s - s.draining_since_s > self.drain_timeout_s]
        for idx in late:
            self._remove(idx)
        return late

    def ready_groups(self) -> dict[int, PlacementGroup]:
        return {i: s.pg for i, s in self.slots.items() if s.ready and s.draining_since_s is None}

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
