"""The governor's loops, without Ray: each telemetry source's scraper decides when its sample lands, in
a thread of its own; the tick never waits for a scrape; a scrape stuck for several of its source's
timeouts pauses the jobs that depend on it, and its late sample is dropped; a restarted governor
takes a baseline scrape first and does not scrape in its constructor.

The actor's own class runs on an asyncio loop here, with an in-memory state store and fake telemetry
sources (no placement group is ever asked for: every job stays paused, its p99 above the SLO)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ray
import runtime.control.governor as governor_module
from runtime.control.governor import STUCK_AFTER_TIMEOUTS, Governor
from runtime.control.governor_state import MemoryStateStore
from runtime.control.law import LawConfig, Reason
from runtime.control.sample import Sample

POLL_S = 0.05
STUCK = "the scrape is stuck"


class FakeSource:
    """A scrape that takes ``takes_s`` and reports ``p99_ms`` (above the 100 ms SLO: the law pauses);
    with ``hang`` set, scrapes block until ``release`` is set."""

    def __init__(self, p99_ms: float = 150.0, takes_s: float = 0.0, timeout_s: float = 1.0, hang: bool = False):
        self.p99_ms, self.takes_s, self.timeout_s = p99_ms, takes_s, timeout_s
        self.release = threading.Event()
        if not hang:
            self.release.set()
        self.scrapes = 0  # scrapes started
        self.landed = 0  # scrapes returned (a synchronisation point for the tests, instead of a sleep)

    def sample(self, now_s=None) -> Sample:
        self.scrapes += 1
        self.release.wait(30)
        time.sleep(self.takes_s)
        self.landed += 1
        return Sample(time.time(), p99_ms=self.p99_ms, rps=50.0)


def _governor(monkeypatch, sources: dict, store=None):
    """A governor whose sources come from ``sources`` by URL (each registration takes the next one)."""
    monkeypatch.setattr(governor_module, "build_source", lambda url, **_: sources[url].pop(0))
    return Governor.__ray_metadata__.modified_class(POLL_S, state_store=store or MemoryStateStore())


def test_a_governor_built_in_process_leaves_its_callers_priority_alone(monkeypatch):
    """As the actor it lowers its whole process to nice 19 (after serving); built here, that process would
    be the caller's (a test run, a notebook): nothing is lowered."""
    import os

    before = {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")} \
        if os.path.isdir("/proc/self/task") else {}
    gov = _governor(monkeypatch, {})
    assert gov.niced_threads == 0
    assert all(os.getpriority(os.PRIO_PROCESS, t) == n for t, n in before.items() if os.path.isdir(f"/proc/self/task/{t}"))


async def _register(gov, job: str, url: str = "http://127.0.0.1:9/metrics") -> None:
    law = vars(LawConfig(slo_p99_ms=100, max_workers=1, max_rows_per_s=100, holddown_s=0.0, cooldown_s=0.0))
    await gov.register(job, law, {"kind": "prometheus", "url": url, "histogram": "h"},
                       {"CPU": 0.1, "training_pool": 1}, poll_interval_s=POLL_S)


def _stop(gov) -> None:
    gov._loop_task.cancel()
    for scraper in gov._scrapers.values():
        scraper.close()


def _fake_groups(monkeypatch, n: int) -> tuple[list, list]:
    """``n`` placement-group handles no Ray ever reserved, and the list their removals land in."""
    import os

    from ray.util.placement_group import PlacementGroup

    import runtime.control.lease as lease_module

    gone: list = []
    monkeypatch.setattr(lease_module, "remove_placement_group", gone.append)
    return [PlacementGroup(ray.PlacementGroupID(os.urandom(18))) for _ in range(n)], gone


async def _one_job(gov, url: str, max_workers: int = 1, **register):
    """``job-a`` registered on ``url``, the governor's loop stopped: the test ticks and decides by hand."""
    law = vars(LawConfig(slo_p99_ms=100, max_workers=max_workers, max_rows_per_s=100))
    await gov.register("job-a", law, {"kind": "prometheus", "url": url, "histogram": "h"},
                       {"CPU": 0.1, "training_pool": 1}, poll_interval_s=POLL_S, **register)
    _stop(gov)
    return gov.jobs["job-a"]


async def _until(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(POLL_S / 2)
    return False


async def _wait(predicate, what: str, timeout_s: float = 15.0) -> None:
    """``_until`` that fails the test when the condition never comes."""
    assert await _until(predicate, timeout_s), f"timed out after {timeout_s} s waiting for {what}"


def _p99s(entry) -> list:
    return [d["p99_ms"] for d in entry.decisions]


def _stuck(entry) -> list:
    return [d for d in entry.decisions if STUCK in (d["error"] or "")]


def test_a_stuck_scrape_pauses_its_jobs_not_before_its_bound_and_its_late_sample_is_dropped(monkeypatch):
    hung = FakeSource(p99_ms=999.0, timeout_s=0.05, hang=True)

    async def scenario():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [hung]})
        started = time.time()
        await _register(gov, "job-a")
        entry = gov.jobs["job-a"]
        assert await _until(lambda: len(_stuck(entry)) >= 3), list(entry.decisions)
        ticks_while_stuck = gov.ticks
        hung.release.set()  # the stuck scrape returns, late, with p99 999 ms
        hung.p99_ms = 120.0  # and every scrape after it is fresh again (still above the SLO: no lease)
        assert await _until(lambda: 120.0 in _p99s(entry)), list(entry.decisions)
        _stop(gov)
        return started, entry, ticks_while_stuck

    started, entry, ticks_while_stuck = asyncio.run(scenario())
    first = _stuck(entry)[0]
    assert first["t"] - started >= STUCK_AFTER_TIMEOUTS * hung.timeout_s  # never before the bound
    assert first["reason"] == Reason.TELEMETRY_MISSING.value and first["level"] == "PAUSE"
    assert ticks_while_stuck >= 3  # the tick kept running while the scrape hung
    assert 999.0 not in _p99s(entry)  # the late sample described the past: dropped, not decided


def test_hung_sources_hold_up_neither_a_healthy_one_nor_the_tick(monkeypatch):
    """More hung sources than a shared default thread pool has threads (min(32, cores + 4))."""
    hung = {f"http://127.0.0.1:9/hung{i}": FakeSource(timeout_s=0.05, hang=True) for i in range(8)}
    healthy = FakeSource(p99_ms=150.0)

    async def scenario():
        gov = _governor(monkeypatch, {**{url: [source] for url, source in hung.items()},
                                      "http://127.0.0.1:9/ok": [healthy]})
        for i, url in enumerate(hung):
            await _register(gov, f"hung-{i}", url)
        await _register(gov, "healthy", "http://127.0.0.1:9/ok")
        stuck_jobs = [gov.jobs[f"hung-{i}"] for i in range(len(hung))]
        every_hung_paused = await _until(lambda: all(_stuck(e) for e in stuck_jobs))
        fresh = await _until(lambda: len(gov.jobs["healthy"].decisions) >= 5)  # both asserted below
        _stop(gov)
        return every_hung_paused, fresh, gov.jobs["healthy"]

    try:
        every_hung_paused, fresh, entry = asyncio.run(scenario())
    finally:  # let the hung threads finish, or the interpreter waits for them at exit
        for source in hung.values():
            source.release.set()
    assert every_hung_paused and fresh
    assert len(entry.decisions) >= 5 and _p99s(entry) == [150.0] * len(entry.decisions) and not _stuck(entry)


def test_a_slow_but_healthy_source_is_not_called_stuck_and_each_sample_is_decided_once(monkeypatch):
    slow = FakeSource(takes_s=0.3, timeout_s=0.15)  # twice its timeout per scrape (two requests), under the bound

    async def scenario():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [slow]})
        await _register(gov, "job-a")
        entry = gov.jobs["job-a"]
        await _wait(lambda: len(entry.decisions) >= 4, "four decisions")
        ticks, scrapes = gov.ticks, slow.scrapes
        _stop(gov)
        return entry, ticks, scrapes

    entry, ticks, scrapes = asyncio.run(scenario())
    assert not _stuck(entry), list(entry.decisions)
    assert len(entry.decisions) <= scrapes  # a decision per landed sample, never one per tick
    assert ticks > len(entry.decisions) + 2, (ticks, len(entry.decisions))  # the tick did not wait for scrapes
    assert entry.directive.level.value == "PAUSE" and entry.directive.reason is Reason.SLO_VIOLATED


def test_a_source_dropped_mid_scrape_stops_its_scraper_and_its_late_sample_decides_nothing(monkeypatch):
    old, new = FakeSource(p99_ms=150.0, takes_s=0.3), FakeSource(p99_ms=120.0)

    async def scenario():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [old, new]})
        await _register(gov, "job-a")
        first = gov._scrapers[gov.jobs["job-a"].source_key]
        await _wait(lambda: old.scrapes == 1, "the old source's scrape to start")  # in flight in its thread
        assert old.landed == 0
        await gov.unregister("job-a")
        await _register(gov, "job-b")  # same endpoint again: a new source, a new scraper
        entry = gov.jobs["job-b"]
        await _wait(lambda: old.landed == 1, "the old scrape to land")  # late: its job is gone
        landed_at = len(entry.decisions)
        await _wait(lambda: len(entry.decisions) >= landed_at + 2, "two decisions after the old scrape landed")
        second = gov._scrapers[entry.source_key]
        _stop(gov)
        return first, second, entry

    first, second, entry = asyncio.run(scenario())
    assert first.task.done() and second is not first
    assert old.scrapes == 1  # the dropped source was never scraped again
    assert entry.decisions and _p99s(entry) == [120.0] * len(entry.decisions)  # only the new source's samples decided


def test_a_restarted_governor_scrapes_nothing_in_its_constructor_and_takes_a_baseline_first(monkeypatch):
    store = MemoryStateStore()
    before = FakeSource(p99_ms=150.0)
    after = FakeSource(p99_ms=130.0, takes_s=0.1)

    async def first_life():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [before]}, store)
        await _register(gov, "job-a")
        await _wait(lambda: len(gov.jobs["job-a"].decisions) >= 2 and store.saves >= 2, "two saved decisions")
        _stop(gov)
        return gov.jobs["job-a"].directive

    before_restart = asyncio.run(first_life())

    restarted_at = time.time()

    async def second_life():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [after]}, store)
        scraped_in_constructor = after.scrapes
        await gov.heartbeat("job-a", 0)  # the first call starts the loops
        entry = gov.jobs["job-a"]
        restored = len(entry.decisions)
        await _wait(lambda: after.scrapes >= 1, "the first scrape after the restart")
        await _wait(lambda: len(entry.decisions) >= restored + 2, "two decisions after the restart")
        _stop(gov)
        return gov, entry, scraped_in_constructor

    gov, entry, scraped_in_constructor = asyncio.run(second_life())
    assert gov.recovered == ["job-a"] and scraped_in_constructor == 0
    fresh = [d for d in entry.decisions if d["t"] >= restarted_at]  # not a directive restored from the store
    assert len(fresh) >= 2 and [d["p99_ms"] for d in fresh] == [130.0] * len(fresh)
    assert len(fresh) <= after.landed - 1  # the first scrape after the restart is a baseline only
    assert before_restart.reason is Reason.SLO_VIOLATED  # the directive before the restart, restored
    assert entry.directive.reason is Reason.SLO_VIOLATED and fresh[-1]["reason"] == Reason.SLO_VIOLATED.value


@pytest.fixture(autouse=True)
def _no_ray_metrics(monkeypatch):
    """ray.util.metrics needs a running Ray; the loops' logic does not (and must not start one)."""

    class Quiet:
        def __init__(self, *a, **k): ...
        def set(self, *a, **k): ...
        def observe(self, *a, **k): ...
        def inc(self, *a, **k): ...

    import ray.util.metrics as metrics

    monkeypatch.setattr(metrics, "Gauge", Quiet)
    monkeypatch.setattr(metrics, "Histogram", Quiet)
    monkeypatch.setattr(metrics, "Counter", Quiet)
    yield
    assert not ray.is_initialized(), "a unit test started Ray (a job was granted a placement group?)"


def test_a_waiting_heartbeat_wakes_on_a_change_and_a_steady_one_waits(monkeypatch):
    """The workers' long poll: an answer waits for a change of the job's directive, and no longer."""
    from runtime.control.law import Directive, Level

    monkeypatch.setattr(governor_module, "LONG_POLL_MAX_S", 120.0)  # only a change can answer a 60-s poll in time

    async def scenario():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [FakeSource(p99_ms=150.0)]})
        await _register(gov, "job-a")
        entry = gov.jobs["job-a"]
        await _wait(lambda: entry.decisions, "a first decision")
        first = await gov.heartbeat("job-a", 0)
        assert first["action"] == "stop" and first["version"] == entry.version
        steady = await gov.heartbeat("job-a", 0, None, first["version"], 0.2)  # nothing changes: waits, same answer
        waiting = asyncio.ensure_future(gov.heartbeat("job-a", 0, {"rows": 5}, first["version"], 60.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        sample = Sample(time.time(), p99_ms=80.0, rps=50.0)
        gov._apply(entry, Directive(Level.THROTTLE, 0, 50.0, Reason.SLACK_LOW), sample)
        woken = await asyncio.wait_for(waiting, 5.0)  # a 60-s long poll that ignored the change would time out here
        _stop(gov)  # no more decisions: only the job's end can answer the next poll
        gone = asyncio.ensure_future(gov.heartbeat("job-a", 0, None, entry.version, 60.0))
        await asyncio.sleep(0.05)
        await gov.unregister("job-a")
        unknown = await asyncio.wait_for(gone, 5.0)
        return first, steady, woken, unknown, entry

    first, steady, woken, unknown, entry = asyncio.run(scenario())
    assert steady["version"] == first["version"]
    # the change, not the timeout, answered (a scrape landing just after it may have moved it on again)
    assert woken["version"] > first["version"]
    assert entry.progress[0]["rows"] == 5  # progress rides on the long poll
    assert unknown == {"action": "stop", "rows_per_s": 0.0, "why": "unknown job", "version": None}


def test_a_manual_pause_survives_a_governor_restart_even_with_headroom(monkeypatch):
    """An operator's `headroom pause` is part of the saved record: the restarted governor keeps the job
    paused by hand although its serving now has ample slack, until `headroom resume`."""
    store = MemoryStateStore()

    async def first_life():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [FakeSource(p99_ms=150.0)]}, store)
        await _register(gov, "job-a")
        assert await gov.set_manual_pause("job-a", True)
        entry = gov.jobs["job-a"]
        await _wait(lambda: entry.decisions and entry.decisions[-1]["reason"] == Reason.MANUAL_PAUSE.value,
                    "a decision paused by hand")
        await _wait(lambda: store.saves >= 3, "the state saved after the manual pause")
        _stop(gov)

    asyncio.run(first_life())
    restarted_at = time.time()
    calm = FakeSource(p99_ms=20.0)  # far under the 100 ms SLO: without the manual pause the law would run

    async def second_life():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [calm]}, store)
        answer = await gov.heartbeat("job-a", 0)  # the first call starts the loops
        entry = gov.jobs["job-a"]
        await _wait(lambda: len([d for d in entry.decisions if d["t"] >= restarted_at]) >= 3, "decisions after the restart")
        held = [d for d in entry.decisions if d["t"] >= restarted_at]
        calm.p99_ms = 150.0  # before the resume: above the SLO, so the resumed job pauses for its own reason, no lease
        resumed_at = time.time()
        assert await gov.set_manual_pause("job-a", False)
        await _wait(lambda: any(d["t"] >= resumed_at and d["p99_ms"] == 150.0 for d in entry.decisions), "a decision after the resume")
        after = [d for d in entry.decisions if d["t"] >= resumed_at and d["p99_ms"] == 150.0]
        _stop(gov)
        return gov, entry, answer, held, after

    gov, entry, answer, held, after = asyncio.run(second_life())
    assert gov.recovered == ["job-a"] and entry.manual is False
    assert answer["action"] == "stop" and answer["why"] == Reason.MANUAL_PAUSE.value
    assert {d["reason"] for d in held} == {Reason.MANUAL_PAUSE.value} and all(d["p99_ms"] == 20.0 for d in held)
    assert not entry.lease.slots  # never granted a slot while paused by hand
    assert after[-1]["reason"] == Reason.SLO_VIOLATED.value  # the hand is off: the law decides again


def test_a_closed_window_pauses_the_job_whatever_the_headroom_and_survives_a_restart(monkeypatch):
    """The driver tells the governor its window ended: WINDOW_END at once and at every sample after,
    with ample slack, and after a governor restart too (no slot is ever granted: no Ray here)."""
    store = MemoryStateStore()
    calm = FakeSource(p99_ms=150.0)  # above the SLO until the window is closed: no lease before it

    async def first_life():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [calm]}, store)
        await _register(gov, "job-a")
        entry = gov.jobs["job-a"]
        await _wait(lambda: entry.decisions, "a first decision")
        assert await gov.close_window("job-a") and not await gov.close_window("no-such-job")
        closed_at = time.time()
        assert entry.directive.reason is Reason.WINDOW_END  # at once, not at the next sample
        calm.p99_ms = 20.0  # ample slack from here on
        await _wait(lambda: sum(d["t"] >= closed_at for d in entry.decisions) >= 3, "decisions after the window closed")
        _stop(gov)
        return [d for d in entry.decisions if d["t"] >= closed_at]

    after_close = asyncio.run(first_life())
    restarted_at = time.time()

    async def second_life():
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [FakeSource(p99_ms=20.0)]}, store)
        answer = await gov.heartbeat("job-a", 0)
        entry = gov.jobs["job-a"]
        await _wait(lambda: sum(d["t"] >= restarted_at for d in entry.decisions) >= 2, "decisions after the restart")
        _stop(gov)
        return answer, [d for d in entry.decisions if d["t"] >= restarted_at], entry

    answer, after_restart, entry = asyncio.run(second_life())
    assert {d["reason"] for d in after_close} == {Reason.WINDOW_END.value} and after_close[-1]["p99_ms"] == 20.0
    assert answer["action"] == "stop" and answer["why"] == Reason.WINDOW_END.value
    assert {d["reason"] for d in after_restart} == {Reason.WINDOW_END.value} and not entry.lease.slots


class PacedSource(FakeSource):
    """A FakeSource that keeps the paces the governor sets on it."""

    def __init__(self, p99_ms: float):
        super().__init__(p99_ms=p99_ms)
        self.paces: list[float] = []

    def set_pace(self, seconds: float) -> None:
        self.paces.append(seconds)


def test_the_governor_slows_its_reads_while_nothing_moves_and_speeds_up_when_a_bound_nears(monkeypatch):
    """The pace follows the pooled law (a manual pause keeps the job's lease empty: no Ray here)."""
    calm = 0.1  # seconds; the law reads calmly once its directive has stood that long

    async def scenario():
        source = PacedSource(p99_ms=20.0)
        gov = _governor(monkeypatch, {"http://127.0.0.1:9/metrics": [source]})
        law = vars(LawConfig(slo_p99_ms=100, max_workers=1, max_rows_per_s=100, holddown_s=0.0, cooldown_s=0.0,
                             calm_read_s=calm))
        await gov.register("job-a", law, {"kind": "prometheus", "url": "http://127.0.0.1:9/metrics", "histogram": "h"},
                           {"CPU": 0.1, "training_pool": 1}, poll_interval_s=POLL_S)
        await gov.set_manual_pause("job-a", True)
        await _wait(lambda: calm in source.paces, "a calm pace for a steady job far inside its SLO")
        calm_at = len(source.paces)
        source.p99_ms = 80.0  # still inside the SLO, but with less slack than the law grows on
        await _wait(lambda: len(source.paces) > calm_at and source.paces[-1] == 0.0, "every refresh again")
        _stop(gov)
        return source.paces, gov.jobs["job-a"]

    paces, entry = asyncio.run(scenario())
    assert paces[0] == 0.0  # the first decisions move (a resume): every refresh
    assert entry.decisions[-1]["reason"] == "MANUAL_PAUSE"


def test_a_worker_heard_then_silent_for_hung_s_loses_its_slot_unless_the_governor_itself_stalled(monkeypatch):
    """Heartbeats reach the lease's clock; the tick removes a slot silent past ``hung_s`` and counts it; a
    tick that comes late (this process stalled) restarts the clocks; the bound and the count survive a
    restart of the governor."""
    from runtime.control.lease import Slot

    pgs, gone = _fake_groups(monkeypatch, 2)
    store, url = MemoryStateStore(), "http://127.0.0.1:9/metrics"

    async def scenario():
        gov = _governor(monkeypatch, {url: [FakeSource()]}, store)
        entry = await _one_job(gov, url, hung_s=10.0)
        lease = entry.lease
        lease.slots, lease.target = {0: Slot(pgs[0], 0.0, ready=True)}, 1
        await gov.heartbeat("job-a", 0)
        t0 = lease.slots[0].heard_s
        assert t0 is not None
        gov._last_tick_s = t0
        for t in (4.0, 8.0):  # ticks a poll or so apart: heard 8 s ago at most, kept
            gov._tick(t0 + t)
        assert gone == [] and entry.hung == 0
        gov._tick(t0 + 10.5)
        assert gone == [pgs[0]] and entry.hung == 1 and 0 not in lease.slots
        # a fresh group, heard once, then a tick 9 s after the last one: the governor stalled, so its clock restarts
        lease.slots[0] = Slot(pgs[1], 0.0, ready=True, heard_s=t0 + 11.0)
        gov._tick(t0 + 20.0)
        assert 0 in lease.slots and lease.slots[0].heard_s == t0 + 20.0
        lease.slots = {}  # a restored slot is checked against Ray's table, which would start Ray here
        gov._persist()
        return gov._summary(entry)

    summary = asyncio.run(scenario())
    assert summary["workers_hung"] == 1
    restarted = _governor(monkeypatch, {url: [FakeSource()]}, store)  # reads the saved state in its constructor
    back = restarted.jobs["job-a"]
    assert back.lease.hung_s == 10.0 and back.hung == 1


def test_a_pause_times_the_workers_last_steps_apart_from_their_release(monkeypatch):
    """The stop time of a pause is when the last of its running workers said its last step ended, never
    later than the release; a worker that never says so (idle between rounds) stops at its release. Both
    count from the decision; the read before it (the reading's time -> the decision) is kept beside
    them. All are kept, reported and saved for a restart."""
    from runtime.control.law import Directive, Level
    from runtime.control.lease import Slot

    pgs, _ = _fake_groups(monkeypatch, 2)
    store, url = MemoryStateStore(), "http://127.0.0.1:9/metrics"

    async def scenario():
        gov = _governor(monkeypatch, {url: [FakeSource()]}, store)
        entry = await _one_job(gov, url, max_workers=2)

        async def pause(t0: float) -> None:
            entry.lease.slots = {i: Slot(pgs[i], 0.0, ready=True) for i in (0, 1)}
            entry.lease.target, entry.started = 2, True
            entry.directive = Directive(Level.RUN, 2, 100.0, Reason.AT_MAX)
            gov._apply(entry, Directive(Level.PAUSE, 0, 0.0, Reason.SLO_VIOLATED), Sample(t0, p99_ms=150.0, rps=50.0))

        reading = time.time() - 0.5  # the scrape that showed the loss began half a second before the decision
        await pause(reading)
        decided = entry.pause_decided_s
        assert decided - reading >= 0.5
        await gov.stopped("job-a", 0)
        assert entry.stopped_at_s is None  # slot 1 still steps
        await gov.stopped("job-a", 1)
        stop = entry.stopped_at_s - decided
        assert entry.reactions_s == [] and entry.stops_s == [] and stop >= 0  # kept with the reaction, at the release
        await gov.released("job-a", 0)
        await gov.released("job-a", 1)
        assert entry.stops_s == [stop] and entry.reactions_s[-1] >= stop  # one triple per pause
        assert entry.reads_s == [decided - reading] and entry.pause_decided_s is None
        await pause(time.time())  # neither worker says it stopped: the release is the stop
        await gov.released("job-a", 0)
        await gov.released("job-a", 1)
        assert len(entry.stops_s) == 2 and entry.stops_s[-1] == entry.reactions_s[-1]
        await gov.stopped("job-a", 0)  # a late word after the release changes nothing
        assert len(entry.stops_s) == 2
        entry.lease.slots = {}  # a restored slot is checked against Ray's table, which would start Ray here
        gov._persist()
        return gov._summary(entry)

    summary = asyncio.run(scenario())
    assert len(summary["stops_s"]) == 2 and len(summary["reactions_s"]) == 2 and len(summary["reads_s"]) == 2
    restarted = _governor(monkeypatch, {url: [FakeSource()]}, store)
    assert restarted.jobs["job-a"].stops_s == summary["stops_s"] and restarted.jobs["job-a"].reads_s == summary["reads_s"]
