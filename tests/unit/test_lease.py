"""A lease's hung-worker clock (:meth:`runtime.control.lease.Lease.hung`), without Ray: the placement
groups are stand-ins and their removal is recorded."""

from __future__ import annotations

import pytest

import runtime.control.lease as lease_module
from runtime.control.lease import Lease, Slot

HUNG_S = 10.0


@pytest.fixture
def removed(monkeypatch) -> list:
    gone: list = []
    monkeypatch.setattr(lease_module, "remove_placement_group", gone.append)
    return gone


def lease_of(**slots: Slot) -> Lease:
    lease = Lease("job", {"CPU": 1, "training_pool": 1}, drain_timeout_s=5.0, park_s=30.0, hung_s=HUNG_S)
    lease.slots = {int(k[1:]): v for k, v in slots.items()}
    lease.target = len(slots)
    return lease


def test_a_worker_that_stops_sending_heartbeats_loses_its_slot_after_hung_s(removed):
    quiet, talking, empty = (Slot("pg-quiet", 0.0, ready=True), Slot("pg-talking", 0.0, ready=True),
                             Slot("pg-empty", 0.0, ready=True))
    lease = lease_of(s0=quiet, s1=talking, s2=empty)
    lease.heard(0, 100.0)  # slot 0's worker is heard once, then falls silent
    for t in (103.0, 106.0, 109.0):
        lease.heard(1, t)
        assert lease.hung(t) == []
    assert lease.hung(100.0 + HUNG_S + 0.5) == [0]
    assert removed == ["pg-quiet"] and sorted(lease.slots) == [1, 2]
    assert lease.hung(109.0 + HUNG_S - 0.5) == []  # slot 1 was heard at 109 s
    # slot 2 never heard a worker of its own (none started yet, or one still importing): never judged
    assert lease.hung(1e6) == [1] and 2 in lease.slots


def test_parked_and_draining_slots_are_not_judged_and_a_warm_resume_is_judged_from_its_last_heartbeat(removed):
    lease = lease_of(s0=Slot("pg-parked", 0.0, ready=True, parked_since_s=0.0, heard_s=0.0),
                     s1=Slot("pg-draining", 0.0, ready=True, draining_since_s=99.0, heard_s=0.0),
                     s2=Slot("pg-parked-talking", 0.0, ready=True, parked_since_s=0.0, heard_s=0.0))
    assert lease.hung(100.0) == [] and removed == []  # silent 100 s, but parked or draining (drain_timeout_s is its bound)
    lease.heard(2, 99.5)  # a parked worker keeps sending heartbeats
    lease.resize(3, 100.0)  # slots 0 and 2 resume warm
    assert lease.slots[0].parked_since_s is None and lease.slots[2].parked_since_s is None
    assert lease.hung(100.5) == [0]  # slot 0's process fell silent while parked: judged at once; slot 2 was heard


def test_a_stalled_caller_restarts_every_heard_clock(removed):
    lease = lease_of(s0=Slot("pg", 0.0, ready=True, heard_s=0.0), s1=Slot("pg-never", 0.0, ready=True))
    lease.restart_clocks(100.0)  # the governor's own tick was late: heartbeats may be queued behind it
    assert lease.slots[1].heard_s is None  # never heard: stays unjudged
    assert lease.hung(100.0 + HUNG_S) == []
    assert lease.hung(100.0 + HUNG_S + 0.5) == [0]


def test_a_group_that_becomes_ready_forgets_a_heartbeat_from_the_worker_before_it(removed, monkeypatch):
    class Group:
        def ready(self):
            return self

    slot = Slot(Group(), 0.0, ready=False, heard_s=50.0)  # a late heartbeat of the removed slot's worker
    lease = lease_of(s0=slot)
    monkeypatch.setattr(lease_module.ray, "wait", lambda refs, num_returns, timeout: (refs, []))
    lease.poll_ready()
    assert slot.ready and slot.heard_s is None
    assert lease.hung(1e6) == []


def test_hung_s_zero_never_removes_a_slot(removed):
    lease = lease_of(s0=Slot("pg", 0.0, ready=True, heard_s=0.0))
    lease.hung_s = 0.0
    assert lease.hung(1e9) == [] and removed == []
