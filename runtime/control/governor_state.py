"""What the governor must not forget when it restarts, and where it keeps it.

The governor is a detached actor with ``max_restarts=-1``: Ray restarts it after a crash, but a new
process starts with empty memory. So after every change the governor writes each job's record — how
it was registered, the control law's state, the current directive, the operator's manual pause, the
counters, and its lease (the placement groups by id) — as JSON into Ray's GCS key-value store, which
outlives any actor (the same place Ray Serve's controller checkpoints itself). A restarted governor
reads it back in ``__init__`` and carries on: the same leases, the same directives, the same
cool-downs, and an operator's pause still in force.

Placement groups of a lease are created ``lifetime="detached"`` (runtime/control/lease.py): a group owned by
the governor process would be removed with it, and the training workers inside with it.

>>> store = GcsStateStore()  # doctest: +SKIP
>>> store.save(encode(0.25, {"my-job": {"lease": lease_record(lease), ...}}))  # doctest: +SKIP
>>> poll_interval_s, records = decode(store.load())  # doctest: +SKIP
>>> restore_lease(records["my-job"]["lease"], Lease("my-job", bundle)).view()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from runtime.control.law import Directive, LawState, Level, Reason
from runtime.control.lease import Lease, Slot

KEY = "headroom/governor/state"
NAMESPACE = "headroom"
VERSION = 1
log = logging.getLogger("headroom.governor")


class StateStore(Protocol):
    """Where the governor's records live: bytes in, bytes out (``None`` when nothing was saved)."""

    def load(self) -> bytes | None: ...

    def save(self, blob: bytes) -> None: ...


class GcsStateStore:
    """Ray's internal key-value store in the GCS: survives any actor, lost only with the cluster."""

    def __init__(self, key: str = KEY):
        self.key = key

    def load(self) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(self.key, namespace=NAMESPACE)

    def save(self, blob: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(self.key, blob, overwrite=True, namespace=NAMESPACE)


class MemoryStateStore:
    """A store in memory: the honest fake for unit tests."""

    def __init__(self) -> None:
        self.blob: bytes | None = None
        self.saves = 0

    def load(self) -> bytes | None:
        return self.blob

    def save(self, blob: bytes) -> None:
        self.blob, self.saves = blob, self.saves + 1


# ---- records: plain JSON, no Ray objects --------------------------------------------------------------
def law_state_record(state: LawState) -> dict:
    return {"level": state.level.value, "workers": state.workers, "rows_per_s": state.rows_per_s,
            "paused_at_s": state.paused_at_s, "ample_since_s": state.ample_since_s, "last_grow_s": state.last_grow_s,
            "hurt_utilization": state.hurt_utilization, "hurt_at_s": state.hurt_at_s,
            "hurt_rows_per_s": state.hurt_rows_per_s,
            "running_since_s": state.running_since_s}


def law_state_from(record: dict) -> LawState:
    return LawState(**dict(record, level=Level(record["level"])))


def directive_record(d: Directive) -> dict:
    """The directive without its slack: slack is a reading of the last sample, not a decision to keep."""
    return {"level": d.level.value, "workers": d.workers, "rows_per_s": d.rows_per_s, "reason": d.reason.value}


def directive_from(record: dict) -> Directive:
    return Directive(Level(record["level"]), record["workers"], record["rows_per_s"], Reason(record["reason"]))


def lease_record(lease: Lease) -> dict:
    slots = {str(idx): {"pg": slot.pg.id.hex(), "created_s": slot.created_s, "ready": slot.ready,
                        "draining_since_s": slot.draining_since_s, "parked_since_s": slot.parked_since_s}
             for idx, slot in lease.slots.items()}
    return {"target": lease.target, "slots": slots}


def restore_lease(record: dict, lease: Lease, *, alive=None) -> Lease:
    """Put the recorded slots back into ``lease``, keeping only groups Ray still has (``alive(pg)``)."""
    import ray
    from ray.util.placement_group import PlacementGroup

    alive = alive or _pg_alive
    lease.target = int(record.get("target", 0))
    for idx, slot in record.get("slots", {}).items():
        pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(slot["pg"])))
        if alive(pg):
            lease.slots[int(idx)] = Slot(pg, slot["created_s"], slot["ready"], slot["draining_since_s"],
                                         slot["parked_since_s"])
        else:
            log.warning("lease of %s: slot %s's placement group is gone; the law will grant a new one", lease.job, idx)
    return lease


def _pg_alive(pg) -> bool:
    from ray.util.placement_group import placement_group_table

    try:
        return placement_group_table(pg).get("state") in ("PENDING", "CREATED", "RESCHEDULING")
    except Exception:  # unknown id (cluster restarted): nothing to adopt
        return False


def encode(poll_interval_s: float, jobs: dict[str, dict]) -> bytes:
    return json.dumps({"version": VERSION, "poll_interval_s": poll_interval_s, "jobs": jobs}, sort_keys=True).encode()


def decode(blob: bytes | None) -> tuple[float | None, dict[str, dict]]:
    """``(poll_interval_s, {job: record})``; an unreadable or foreign blob is ignored (start empty, say so)."""
    if not blob:
        return None, {}
    try:
        doc = json.loads(blob)
        if doc.get("version") != VERSION or not isinstance(doc.get("jobs"), dict):
            raise ValueError(f"unknown state version {doc.get('version')!r}")
        return doc.get("poll_interval_s"), doc["jobs"]
    except (ValueError, TypeError, AttributeError) as exc:
        log.error("ignoring the governor's saved state (%s); jobs re-register themselves", exc)
        return None, {}
