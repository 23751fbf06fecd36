"""The job driver follows its lease without Ray: a pause that begins while the driver sits between
rounds hands the idle worker's slot back, and a slot the governor parks (or keeps) keeps its warm
worker process; only a slot the governor removes loses it.

The governor here is a fake with the two calls the driver makes (``lease`` and ``released``); ``ray.get``
returns what the fake returned and ``ray.kill`` is recorded, so no cluster is started."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import runtime.driver.job as job_module
from runtime.driver.job import _RoundLoop


class _Call:
    def __init__(self, fn):
        self.remote = fn


class FakeGovernor:
    """Slot 0 is draining (the governor has just said PAUSE); its release answers ``outcome``."""

    def __init__(self, outcome: str):
        self.outcome = outcome
        self.view = {"ready": {}, "draining": [0], "parked": []}
        self.releases: list[int] = []
        self.lease = _Call(lambda job: {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in self.view.items()})
        self.released = _Call(self._released)

    def _released(self, job: str, slot: int) -> str:
        self.releases.append(slot)
        if slot in self.view["draining"]:
            self.view["draining"].remove(slot)
            if self.outcome == "parked":
                self.view["parked"].append(slot)
            return self.outcome
        return "parked" if slot in self.view["parked"] else "unknown"


@pytest.fixture
def killed(monkeypatch) -> list:
    killed: list = []
    monkeypatch.setattr(job_module.ray, "get", lambda value, timeout=None: value)
    monkeypatch.setattr(job_module.ray, "kill", lambda actor, no_restart=True: killed.append(actor))
    return killed


def _idle_loop(gov: FakeGovernor, worker: object) -> _RoundLoop:
    """A round loop between rounds, its one worker in slot 0 idle."""
    loop = object.__new__(_RoundLoop)
    loop.spec, loop.gov, loop.register = SimpleNamespace(name="job"), gov, lambda: None
    loop.actors, loop._running, loop._actor_pg = {0: worker}, [0], {}
    return loop


def test_a_pause_between_rounds_parks_the_idle_worker_and_keeps_its_process(killed):
    gov, worker = FakeGovernor("parked"), object()
    loop = _idle_loop(gov, worker)
    loop._reconcile()
    assert gov.releases == [0]  # the slot was handed back once
    assert killed == [] and loop.actors == {0: worker}  # parked: the warm process stays
    assert loop._running == []  # and runs nothing while paused
    loop._reconcile()  # the next pass sees the slot parked: still kept, not released again
    assert killed == [] and loop.actors == {0: worker} and gov.releases == [0]


def test_a_slot_kept_by_its_hand_back_keeps_its_worker(killed):
    gov, worker = FakeGovernor("kept"), object()
    loop = _idle_loop(gov, worker)
    loop._reconcile()
    assert killed == [] and loop.actors == {0: worker}


def test_a_slot_removed_by_its_hand_back_loses_its_worker(killed):
    gov, worker = FakeGovernor("removed"), object()
    loop = _idle_loop(gov, worker)
    loop._reconcile()
    assert killed == [worker] and loop.actors == {} and loop._running == []


class WindowGovernor:
    def __init__(self):
        self.closed: list[str] = []
        self.close_window = _Call(lambda job: self.closed.append(job) or True)


def _windowed_loop(gov, rows_total: int, rows_done: int) -> _RoundLoop:
    from runtime.training.ingest import RangeSet

    loop = object.__new__(_RoundLoop)
    ledger = RangeSet()
    if rows_done:
        ledger.add(0, rows_done)
    loop.spec = SimpleNamespace(name="job", checkpoint=SimpleNamespace(every_steps=1), data=SimpleNamespace(batch_rows=1))
    loop.gov = gov
    loop.truth, loop.dataset = SimpleNamespace(ledger=ledger), SimpleNamespace(total_rows=rows_total)
    loop.until_s, loop.window_ended_s, loop._due = 0.0, None, None  # the window ended at the epoch: long ago
    return loop


def test_a_window_that_ends_after_the_last_row_does_not_pause_the_finishing_work(killed):
    """Every row consumed before the window's end: the last poll (validation and the post-mortem come
    after it) must not close the window, or its WINDOW_END pause would hold the finishing work for good."""
    gov = WindowGovernor()
    loop = _windowed_loop(gov, rows_total=100, rows_done=100)
    loop.run()  # nothing pending: returns at once
    loop._end_window_if_due(1e12)
    assert gov.closed == [] and loop.window_ended_s is None


def test_a_window_that_ends_with_rows_left_is_closed(killed):
    gov = WindowGovernor()
    loop = _windowed_loop(gov, rows_total=100, rows_done=40)
    loop._end_window_if_due(1e12)
    assert gov.closed == ["job"] and loop.window_ended_s == 1e12


def _pg(hex_id: str) -> SimpleNamespace:
    return SimpleNamespace(id=SimpleNamespace(hex=lambda: hex_id))


def test_a_slot_whose_group_was_replaced_loses_its_old_worker(killed):
    """The governor removed slot 0's group (its worker sent no heartbeat) and granted a fresh one under the
    same index: the old worker is stopped, its shard withdrawn, not waited on; a new worker starts later."""
    gov, worker = FakeGovernor("removed"), object()
    gov.view = {"ready": {0: _pg("new")}, "draining": [], "parked": []}
    loop = _idle_loop(gov, worker)
    loop._actor_pg = {0: "old"}
    loop._last_lease_check = 0.0
    assert loop._withdraw_orphans({0}) == {0} and killed == [worker]  # mid-round: withdrawn, not a crash
    loop._actor_pg = {0: "new"}
    loop._last_lease_check = 0.0
    assert loop._withdraw_orphans({0}) == set()  # the same group as its actor's: nothing to withdraw
