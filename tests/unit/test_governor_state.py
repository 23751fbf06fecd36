"""The governor's saved state: records round-trip exactly, a lease comes back with only the groups Ray
still has, and unreadable state is ignored rather than crashing a restarting governor."""

from __future__ import annotations

import json
import os

import pytest
from ray.util.placement_group import PlacementGroup

import ray
from runtime.control.governor_state import (MemoryStateStore, decode, directive_from, directive_record, encode,
                                    law_state_from, law_state_record, lease_record, restore_lease)
from runtime.control.law import Directive, LawState, Level, Reason
from runtime.control.lease import Lease, Slot


def _pg() -> PlacementGroup:
    return PlacementGroup(ray.PlacementGroupID(os.urandom(18)))


@pytest.mark.parametrize("state", [
    LawState(),
    LawState(Level.RUN, 2, 450.0, None, 12.5, 13.0),
    LawState(Level.PAUSE, 0, 0.0, 99.25, None, None),
    LawState(Level.THROTTLE, 1, 33.3, 1.0, 2.0, 3.0),
])
def test_law_state_round_trips_through_json(state):
    assert law_state_from(json.loads(json.dumps(law_state_record(state)))) == state


def test_directive_round_trips_without_its_slack():
    d = Directive(Level.THROTTLE, 1, 125.0, Reason.SLACK_LOW, slack=0.07)
    back = directive_from(json.loads(json.dumps(directive_record(d))))
    assert back == Directive(Level.THROTTLE, 1, 125.0, Reason.SLACK_LOW, slack=None)


def test_lease_comes_back_with_only_the_groups_ray_still_has():
    lease = Lease("job-a", {"CPU": 1, "training_pool": 1}, 7.0, 12.0)
    kept, gone = _pg(), _pg()
    lease.slots = {0: Slot(kept, 1.0, ready=True), 1: Slot(gone, 2.0, ready=True, draining_since_s=3.0),
                   2: Slot(_pg(), 4.0, ready=True, parked_since_s=5.0)}
    lease.target = 1
    record = json.loads(json.dumps(lease_record(lease)))
    alive_ids = {kept.id.hex(), lease.slots[2].pg.id.hex()}
    back = restore_lease(record, Lease("job-a", {"CPU": 1, "training_pool": 1}, 7.0, 12.0),
                         alive=lambda pg: pg.id.hex() in alive_ids)
    assert back.target == 1 and sorted(back.slots) == [0, 2]
    assert back.slots[0].pg.id == kept.id and back.slots[0].ready and back.slots[0].draining_since_s is None
    assert back.slots[2].parked_since_s == 5.0
    assert back.view()["parked"] == [2] and list(back.view()["ready"]) == [0]


def test_encode_decode_and_the_memory_store():
    store = MemoryStateStore()
    assert decode(store.load()) == (None, {})
    store.save(encode(0.25, {"j": {"x": 1}}))
    assert decode(store.load()) == (0.25, {"j": {"x": 1}}) and store.saves == 1


@pytest.mark.parametrize("blob", [b"{", b"[]", b'{"version": 99, "jobs": {}}', b'{"version": 1, "jobs": []}',
                                  b"\xff\xfe", b"null"])
def test_unreadable_state_is_ignored_not_raised(blob):
    assert decode(blob) == (None, {})
