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
    quiet, talking = Slot("pg-quiet", 0.0, ready=True), Slot("pg-talking", 0.0, ready=True)
    lease = lease_of(s0=quiet, s1=talking)
    assert lease.hung(100.0) == []  # the clock starts when a slot is first found running: start-up counts
    for t in (103.0, 106.0, 109.0):
        lease.heard(1, t)
        assert lease.hung(t) == []
    assert lease.hung(100.0 + HUNG_S + 0.5) == [0]  # slot 0: silent since 100 s
    assert removed == ["pg-quiet"] and sorted(lease.slots) == [1]
    assert lease.hung(109.0 + HUNG_S - 0.5) == []  # slot 1 was heard at 109 s


def test_parked_and_draining_slots_are_not_judged_and_a_warm_resume_restarts_the_clock(removed):
    parked = Slot("pg-parked", 0.0, ready=True, parked_since_s=0.0, heard_s=0.0)
    draining = Slot("pg-draining", 0.0, ready=True, draining_since_s=99.0, heard_s=0.0)
    lease = lease_of(s0=parked, s1=draining)
    assert lease.hung(100.0) == [] and removed == []  # silent 100 s, but parked or draining (drain_timeout_s is its bound)
    lease.resize(1, 100.0)  # slot 0 resumes warm
    assert lease.slots[0].parked_since_s is None
    assert lease.hung(101.0) == []  # its clock starts again, here
    assert lease.hung(101.0 + HUNG_S + 0.5) == [0]


def test_a_stalled_caller_restarts_every_clock(removed):
    lease = lease_of(s0=Slot("pg", 0.0, ready=True, heard_s=0.0))
    lease.restart_clocks()  # the governor's own tick was late: heartbeats may be queued behind it
    assert lease.hung(100.0) == [] and lease.hung(100.0 + HUNG_S) == []
    assert lease.hung(100.0 + HUNG_S + 0.5) == [0]


def test_hung_s_zero_never_removes_a_slot(removed):
    lease = lease_of(s0=Slot("pg", 0.0, ready=True, heard_s=0.0))
    lease.hung_s = 0.0
    assert lease.hung(1e9) == [] and removed == []
