"""The governor's two loops, without Ray: scrapers decide when a sample lands, the tick never waits for
a scrape, and a scrape stuck past its source's timeout pauses the jobs that depend on it.

The actor's own class runs on an asyncio loop here, with an in-memory state store and fake telemetry
sources (no placement group is ever asked for: the jobs stay paused or the law grants nothing yet)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ray
import runtime.governor as governor_module
from runtime.governor import Governor
from runtime.governor_state import MemoryStateStore
from runtime.law import LawConfig, Level, Reason
from runtime.sample import Sample

POLL_S = 0.05
SERVING = {"kind": "prometheus", "url": "http://127.0.0.1:9/metrics", "histogram": "h"}


class StuckSource:
    """A scrape that never returns, as if blocked where the source's own timeout cannot reach."""

    timeout_s = 0.1

    def __init__(self) -> None:
        self.release = threading.Event()
        self.scrapes = 0

    def sample(self, now_s=None) -> Sample:
        self.scrapes += 1
        self.release.wait(30)
        return Sample.failed(time.time(), "released")


class SlowSource:
    """A healthy service whose scrape takes six poll intervals."""

    timeout_s = 1.0

    def __init__(self) -> None:
        self.scrapes = 0

    def sample(self, now_s=None) -> Sample:
        self.scrapes += 1
        time.sleep(6 * POLL_S)
        return Sample(time.time(), p99_ms=150.0, rps=50.0)  # far above the SLO: the law pauses


def _governor(monkeypatch, source):
    monkeypatch.setattr(governor_module, "build_source", lambda **_: source)
    return Governor.__ray_metadata__.modified_class(POLL_S, state_store=MemoryStateStore())


async def _register(gov) -> None:
    law = vars(LawConfig(slo_p99_ms=100, max_workers=1, max_rows_per_s=100, holddown_s=0.0, cooldown_s=0.0))
    await gov.register("job-a", law, SERVING, {"CPU": 0.1, "training_pool": 1}, poll_interval_s=POLL_S)


async def _until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(POLL_S / 2)
    return False


def test_a_scrape_stuck_past_its_timeout_pauses_the_job_and_the_tick_goes_on(monkeypatch):
    source = StuckSource()

    async def scenario():
        gov = _governor(monkeypatch, source)
        await _register(gov)
        entry = gov.jobs["job-a"]
        stuck = await _until(lambda: any("the scrape is stuck" in (d["error"] or "") for d in entry.decisions))
        ticks_then = gov.ticks
        await _until(lambda: gov.ticks >= ticks_then + 3)
        source.release.set()
        gov._loop_task.cancel()
        for task in gov._scrapers.values():
            task.cancel()
        return stuck, entry, gov.ticks - ticks_then

    stuck, entry, later_ticks = asyncio.run(scenario())
    assert stuck, list(entry.decisions)
    assert entry.directive.level is Level.PAUSE and entry.directive.reason is Reason.TELEMETRY_MISSING
    assert source.scrapes == 1  # one scrape, still blocked, while the tick kept deciding
    assert later_ticks >= 3
    assert not ray.is_initialized()


def test_the_tick_does_not_wait_for_a_slow_scrape_and_each_sample_is_decided_once(monkeypatch):
    source = SlowSource()

    async def scenario():
        gov = _governor(monkeypatch, source)
        await _register(gov)
        entry = gov.jobs["job-a"]
        await _until(lambda: len(entry.decisions) >= 2)
        ticks, scrapes, decisions = gov.ticks, source.scrapes, len(entry.decisions)
        gov._loop_task.cancel()
        for task in gov._scrapers.values():
            task.cancel()
        return entry, ticks, scrapes, decisions

    entry, ticks, scrapes, decisions = asyncio.run(scenario())
    assert decisions <= scrapes  # a decision per landed sample, never one per tick on an old sample
    assert ticks > 2 * decisions, (ticks, decisions)  # ~6 ticks per scrape: the tick never waited for one
    assert entry.directive.level is Level.PAUSE and entry.directive.reason is Reason.SLO_VIOLATED
    assert [d["p99_ms"] for d in entry.decisions] == [150.0] * decisions


def test_the_last_job_leaving_stops_its_scraper(monkeypatch):
    source = SlowSource()

    async def scenario():
        gov = _governor(monkeypatch, source)
        await _register(gov)
        scraper = gov._scrapers[next(iter(gov.sources))]
        await gov.unregister("job-a")
        await asyncio.sleep(POLL_S)
        gov._loop_task.cancel()
        return gov, scraper

    gov, scraper = asyncio.run(scenario())
    assert scraper.cancelled() or scraper.done()
    assert gov.sources == {} and gov._scrapers == {} and gov._sampled_at == {}


@pytest.fixture(autouse=True)
def _no_ray_metrics(monkeypatch):
    """ray.util.metrics needs a running Ray; the loops' logic does not."""

    class Quiet:
        def __init__(self, *a, **k): ...
        def set(self, *a, **k): ...
        def observe(self, *a, **k): ...

    import ray.util.metrics as metrics

    monkeypatch.setattr(metrics, "Gauge", Quiet)
    monkeypatch.setattr(metrics, "Histogram", Quiet)
