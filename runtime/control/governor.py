"""The governor: a detached, named Ray actor that turns serving telemetry into directives.

A thin shell around pure parts, on one asyncio event loop:

- one **scraper** task per telemetry source takes a :class:`Sample` every ``poll_interval_s`` (in a
  thread, so a hanging endpoint blocks nothing) and, the moment it lands, runs
  :func:`runtime.control.law.decide` once on the pooled budget of the jobs that watch that source, divides the
  result among them by priority (:mod:`runtime.control.shares`), records each job's decision and applies it to
  the job's :class:`Lease`, and sets how soon the source must read its endpoint afresh
  (:func:`runtime.control.law.read_every_s`: every refresh, or ``calm_read_s`` while nothing moves);
- the **tick**, every ``poll_interval_s``, does everything else: the training pool's size (queried
  in a thread of its own), a backstop for a scrape stuck for ``STUCK_AFTER_TIMEOUTS`` of its source's
  timeouts (its jobs pause; the late sample is dropped), lease upkeep (groups becoming ready, drains
  and parks expiring), saving state, metrics. It waits for no scrape and no query, so its time is the
  governor's own work: deciding and applying for 50 jobs is a few milliseconds.

Workers keep their directive fresh with a long poll (:meth:`Governor.heartbeat`: answered at once
when the job's directive changes); the job driver asks which slots of the lease are ready
(:meth:`Governor.lease`). Nothing may stop the loops: a failed decision
or tick is counted and logged, and the next one runs. After every change the tick saves each job's
record (lease, directive, law state, manual pause, counters) to Ray's GCS key-value store, and a
restarted governor starts from those records (runtime/control/governor_state.py).

>>> gov = get_or_create_governor()  # doctest: +SKIP
>>> ray.get(gov.status.remote())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import ray

from runtime.control.governor_state import (GcsStateStore, StateStore, decode, directive_from, directive_record, encode,
                             law_state_from, law_state_record, lease_record, restore_lease)
from runtime.control.law import Directive, LawConfig, LawState, Level, Reason, decide, read_every_s
from runtime.control.lease import POOL_RESOURCE, Lease
from runtime.control.sample import Sample
from runtime.control.shares import Claim, clamp_state, divide, job_directive, pooled_config
from runtime.control.telemetry import build_source, set_pace
from runtime.loopback import yield_to_serving

LEVEL_VALUE = {Level.PAUSE: 0, Level.THROTTLE: 1, Level.RUN: 2}
NAME = "headroom-governor"
NAMESPACE = "headroom"
HEAD_RESOURCE = "node:__internal_head__"  # Ray puts this resource on the head node only
# A scrape in flight longer than this many of its source's ``timeout_s`` is stuck: httpx's timeout
# bounds each phase (connect, read), and a PromQL source makes two requests (latency, utilization).
STUCK_AFTER_TIMEOUTS = 4
HUNG_STALL_S = 5.0  # ticks this much later than poll_interval_s apart: the governor stalled, not the workers
PHASES = ("training", "finishing")
LONG_POLL_MAX_S = 1.0  # the longest a worker's heartbeat waits for a change before it is answered anyway
log = logging.getLogger("headroom.governor")


@dataclass
class JobEntry:
    job: str
    law: LawConfig
    source_key: str  # the telemetry source's config as canonical JSON (jobs with the same one share it)
    lease: Lease
    priority: int = 0
    directive: Directive = field(default_factory=lambda: Directive(Level.PAUSE, 0, 0.0, Reason.TELEMETRY_MISSING))
    decisions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20_000))  # ~80 min at 0.25 s; the driver keeps the whole log
    decisions_base: int = 0  # index of decisions[0] in the job's whole decision history
    reactions_s: list = field(default_factory=list)  # PAUSE decided -> every slot released
    stops_s: list = field(default_factory=list)  # PAUSE decided -> every worker's last step ended (<= its reaction)
    reads_s: list = field(default_factory=list)  # the reading behind the PAUSE taken -> decided (the telemetry's read)
    pause_started_s: float | None = None  # when the reading behind this pause was taken
    pause_decided_s: float | None = None  # when the law decided it (the reaction counts from here)
    stopped_slots: set = field(default_factory=set)  # slots whose worker said its last step ended, this pause
    stopped_at_s: float | None = None  # when the last of them said so (kept with the reaction, at the release)
    pauses: int = 0
    resumes: int = 0
    started: bool = False
    manual: bool = False
    window_closed: bool = False  # its planned window ended: paused until the driver yields (WINDOW_END)
    phase: str = "training"  # finishing: no slots, only "is there headroom" for the job's office
    sample: Sample | None = None
    progress: dict = field(default_factory=dict)  # slot -> latest heartbeat payload
    hung: int = 0  # slots taken from workers that stopped sending heartbeats (Lease.hung)
    version: int = 0  # bumped whenever what a worker would be told changes (the workers' long polls wake)
    answer_sig: tuple | None = None
    changed: asyncio.Event | None = None  # set, then replaced, at each bump


@dataclass
class _Scraper:
    """One telemetry source's sampling task, with a thread of its own: a scrape stuck there holds up
    no other source, and not the tick."""

    baseline_first: bool = False  # a restarted governor's first scrape only sets the source's baseline
    task: asyncio.Task | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="scrape"))
    started_s: float | None = None  # monotonic start of the scrape in flight
    stuck: bool = False  # the tick paused this source's jobs during the scrape in flight

    def close(self) -> None:
        """Stop sampling; a thread stuck in a scrape is left to finish on its own (Python cannot kill it)."""
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _training_clock(state: LawState, members: list[JobEntry], now: float) -> LawState:
    """The law learns a load ceiling only from a violation ``load_learn_after_s`` into *training*: until
    a worker reports trained rows after the resume, the clock stays at now. A worker's cold start (a new
    process, its imports, a first batch) can take longer than that on a busy host and hurt serving on its
    own, which says nothing about the load training can run beside."""
    since = state.running_since_s
    if state.level is Level.PAUSE or since is None:
        return state
    trained = any(p.get("rows", 0) > 0 and p.get("t", 0.0) >= since for e in members for p in e.progress.values())
    return state if trained else replace(state, running_since_s=max(since, now))


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class Governor:
    def __init__(self, poll_interval_s: float = 0.25, state_store: StateStore | None = None):
        # On a serving host: after serving, before training. Only as the actor: built in-process (the unit
        # tests), lowering the caller would be a side effect on someone else's process.
        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        self.niced_threads = yield_to_serving() if in_actor else 0
        self.poll_interval_s = poll_interval_s
        self.jobs: dict[str, JobEntry] = {}
        self.sources: dict[str, object] = {}
        self.laws: dict[str, LawState] = {}  # the pooled law's memory, one per telemetry source
        self.pool_slots: int | None = None  # training_pool slots in the cluster (None: unknown)
        self.ticks = 0
        self.tick_errors = 0
        self.last_tick_ms = 0.0
        self._loop_task: asyncio.Task | None = None
        self._scrapers: dict[str, _Scraper] = {}  # one per telemetry source
        self._pool_reader = ThreadPoolExecutor(1, thread_name_prefix="pool-slots")
        self._pool_read: Future | None = None  # the pool-size query in flight
        self._decide_ms = 0.0  # time spent deciding since the last tick (part of that tick's work)
        self._last_tick_s: float | None = None  # when _tick last ran (a long gap restarts the workers' hung clocks)
        self._metrics = _Metrics()
        self._store = state_store or GcsStateStore()
        self._saved: tuple | None = None  # (poll interval, records) last written
        self.recovered: list[str] = []  # jobs restored from saved state when this process started
        self._recover()

    # ---- registration -------------------------------------------------------------------------
    async def register(self, job: str, law: dict, serving: dict, bundle: dict, drain_timeout_s: float = 10.0,
                       poll_interval_s: float | None = None, park_s: float = 30.0, priority: int = 0,
                       phase: str = "training", hung_s: float = 0.0) -> dict:
        """Add a job (idempotent: a driver that restarts re-registers and keeps its entry). Higher
        ``priority`` gets workers first when the pooled headroom is short; ``phase`` as in :meth:`set_phase`;
        ``hung_s``: a running worker not heard from this long loses its slot (0: never; :class:`Lease`)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; use one of {PHASES}")
        if poll_interval_s:
            self.poll_interval_s = min(self.poll_interval_s, poll_interval_s) if self.jobs else poll_interval_s
        if job not in self.jobs:
            key = source_key(serving)
            if key not in self.sources:
                self.sources[key] = build_source(**serving)
            self.jobs[job] = JobEntry(job, LawConfig(**law), key, Lease(job, bundle, drain_timeout_s, park_s), priority,
                                      phase=phase)
        self.jobs[job].lease.hung_s = hung_s  # set at every registration: a driver that re-registers keeps it current
        self._ensure_loop()  # and a scraper for a new source
        self._persist()
        return {"job": job, "poll_interval_s": self.poll_interval_s}

    async def unregister(self, job: str) -> dict:
        """Release the job's lease and hand back its record (decisions, reaction times, counters)."""
        entry = self.jobs.pop(job, None)
        if entry is None:
            return {}
        entry.lease.release_all()
        if entry.changed is not None:  # waiting heartbeats answer now: the job is gone
            entry.changed.set()
        self._metrics.forget(job)
        if not any(e.source_key == entry.source_key for e in self.jobs.values()):
            source = self.sources.pop(entry.source_key, None)
            getattr(source, "close", lambda: None)()  # a probe's thread, an HTTP client
            self.laws.pop(entry.source_key, None)
            scraper = self._scrapers.pop(entry.source_key, None)
            if scraper is not None:
                scraper.close()
        self._persist()
        return self._record(entry)

    # ---- calls from workers and drivers ---------------------------------------------------------
    async def heartbeat(self, job: str, slot: int, progress: dict | None = None, known: int | None = None,
                        wait_s: float = 0.0) -> dict:
        """A worker's directive. A long poll: when ``known`` is the job's current ``version`` the answer
        waits up to ``wait_s`` (at most ``LONG_POLL_MAX_S``) for a change, so a pause reaches a worker at once while a
        steady directive costs one call per ``wait_s`` (runtime/training/directive.py)."""
        self._ensure_loop()  # a restarted governor ticks again at the first call it gets
        entry = self.jobs.get(job)
        if entry is not None:
            entry.lease.heard(slot, time.time())
        if entry is not None and progress is not None:
            entry.progress[slot] = dict(progress, t=time.time())
        if entry is not None and wait_s > 0 and known == entry.version:
            if entry.changed is None:
                entry.changed = asyncio.Event()
            try:
                await asyncio.wait_for(entry.changed.wait(), timeout=min(wait_s, LONG_POLL_MAX_S))
            except asyncio.TimeoutError:
                pass
            entry = self.jobs.get(job)
        return self._answer(entry, slot)

    def _answer(self, entry: "JobEntry | None", slot: int) -> dict:
        if entry is None:
            return {"action": "stop", "rows_per_s": 0.0, "why": "unknown job", "version": None}
        d = entry.directive
        if d.level is Level.PAUSE or not entry.lease.should_run(slot):
            return {"action": "stop", "rows_per_s": 0.0, "why": d.reason.value, "version": entry.version}
        running = max(1, len(entry.lease.view()["ready"]))
        return {"action": "run", "rows_per_s": d.rows_per_s / running, "level": d.level.value, "version": entry.version}

    def _notify(self, entry: JobEntry) -> None:
        """Wake the job's waiting heartbeats if what a worker would be told changed."""
        d, lease = entry.directive, entry.lease
        sig = (d.level, round(d.rows_per_s, 3), tuple(sorted(i for i in lease.slots if lease.should_run(i))))
        if sig == entry.answer_sig:
            return
        entry.answer_sig = sig
        entry.version += 1
        if entry.changed is not None:
            entry.changed.set()
            entry.changed = None

    async def stopped(self, job: str, slot: int) -> None:
        """The worker in ``slot`` ended its last step on a stop (sent before it serialises its state)."""
        entry = self.jobs.get(job)
        if entry is not None and entry.pause_started_s is not None:
            entry.stopped_slots.add(slot)
            self._note_stop(entry, time.time())

    async def lease(self, job: str) -> dict | None:
        """The job's lease as ``{"ready": {slot: PlacementGroup}, "draining": [...], "parked": [...]}``."""
        self._ensure_loop()
        entry = self.jobs.get(job)
        return None if entry is None else entry.lease.view()

    async def released(self, job: str, slot: int) -> str:
        """A worker stopped (yielded, finished or died). Returns kept/parked/removed/running/unknown."""
        entry = self.jobs.get(job)
        if entry is None:
            return "unknown"
        outcome = entry.lease.release(slot, time.time(), park=entry.directive.level is Level.PAUSE and entry.phase == "training")
        entry.progress.pop(slot, None)
        self._note_release(entry, time.time())
        self._notify(entry)
        self._persist()
        return outcome

    async def set_phase(self, job: str, phase: str) -> bool:
        """``training``: the job's workers get slots. ``finishing`` (validation, registration, the
        post-mortem): no slots, and the directive only says whether serving has headroom for the
        driver's own work, which the driver holds while it is PAUSE. False if the job is unknown."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; use one of {PHASES}")
        entry = self.jobs.get(job)
        if entry is None:
            return False
        entry.phase = phase
        if phase != "training":
            entry.lease.resize(0, time.time())
        self._notify(entry)
        self._persist()
        return True

    async def set_manual_pause(self, job: str, paused: bool) -> bool:
        """An operator's pause, in force at once (its end: the control law decides again at the next
        sample). False if the job is unknown."""
        entry = self.jobs.get(job)
        if entry is None:
            return False
        entry.manual = paused
        if paused:
            self._hold(entry, Reason.MANUAL_PAUSE)
        self._persist()
        return True

    async def close_window(self, job: str) -> bool:
        """The job's planned window ended: pause it now (``WINDOW_END``), whatever the headroom, so its
        workers stop and its driver checkpoints and yields. False if the job is unknown."""
        entry = self.jobs.get(job)
        if entry is None:
            return False
        entry.window_closed = True
        self._hold(entry, Reason.WINDOW_END)
        self._persist()
        return True

    def _hold(self, entry: JobEntry, reason: Reason) -> None:
        """Pause ``entry`` at once for ``reason`` (the next samples keep it paused while the hold lasts)."""
        if entry.directive.reason is not reason:
            now = time.time()
            sample = replace(entry.sample, time_s=now) if entry.sample else Sample.failed(now, "no sample yet")
            self._apply(entry, Directive(Level.PAUSE, 0, 0.0, reason, entry.directive.slack), sample)

    async def directive(self, job: str) -> dict | None:
        """The job's directive now (level, reason, phase), or ``None`` if the job is unknown."""
        entry = self.jobs.get(job)
        if entry is None:
            return None
        d = entry.directive
        return {"level": d.level.value, "reason": d.reason.value, "phase": entry.phase}

    async def snapshot(self, job: str, since: int = 0) -> dict | None:
        """The job's state, plus its decisions from index ``since`` on (for the driver's MLflow log)."""
        entry = self.jobs.get(job)
        if entry is None:
            return None
        start = max(0, since - entry.decisions_base)
        if start > len(entry.decisions):  # asked past our end: this process restarted and numbers from 0 again
            start = 0
        return dict(self._summary(entry), decisions=list(entry.decisions)[start:],
                    next_since=entry.decisions_base + len(entry.decisions))

    async def status(self) -> dict:
        return {"poll_interval_s": self.poll_interval_s, "ticks": self.ticks, "tick_errors": self.tick_errors,
                "last_tick_ms": self.last_tick_ms, "pool_slots": self.pool_slots, "recovered": list(self.recovered),
                "jobs": [self._summary(e) for e in self.jobs.values()]}

    # ---- the loops ------------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        """Start the tick and a scraper for every source that has none (a restarted governor starts
        them at the first call it gets)."""
        loop = asyncio.get_running_loop()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._run())
        for key in self.sources:
            scraper = self._scrapers.setdefault(key, _Scraper())
            if scraper.task is None or scraper.task.done():
                scraper.task = loop.create_task(self._scrape_loop(key, scraper))

    async def _scrape_loop(self, key: str, scraper: _Scraper) -> None:
        """Sample one source every poll interval, in the scraper's own thread, and decide for its jobs
        as soon as the sample lands."""
        source, loop = self.sources.get(key), asyncio.get_running_loop()
        while source is not None and self.sources.get(key) is source:  # until its last job leaves
            scraper.started_s = time.monotonic()
            sample = await loop.run_in_executor(scraper.executor, _safe_sample, source)
            took_s, scraper.started_s = time.monotonic() - scraper.started_s, None
            decide = self.sources.get(key) is source and not scraper.stuck and not scraper.baseline_first
            scraper.stuck = scraper.baseline_first = False  # a stuck scrape's late sample is stale: dropped
            if decide:
                self._landed(key, sample)
            await asyncio.sleep(max(0.0, self.poll_interval_s - took_s))

    def _landed(self, key: str, sample: Sample) -> None:
        """A scrape of ``key`` came back: decide now; the time it takes counts in the next tick's."""
        deciding = time.perf_counter()
        self._on_sample(key, sample)
        self._decide_ms += (time.perf_counter() - deciding) * 1000

    def _on_sample(self, key: str, sample: Sample) -> None:
        try:
            members = [e for e in self.jobs.values() if e.source_key == key]  # in registration order
            if members:
                self._decide_pooled(key, members, sample)
        except Exception:  # the scraper must outlive any bug in one decision
            self.tick_errors += 1
            self._metrics.error()
            log.exception("governor decision failed")

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                self._tick(time.time())
                self._persist()
                self.last_tick_ms = (time.perf_counter() - started) * 1000 + self._decide_ms
                self._metrics.tick(self.last_tick_ms, self.jobs.values())
            except Exception:  # the loop must outlive any bug in one tick
                self.tick_errors += 1
                self._metrics.error()
                log.exception("governor tick failed")
            self.ticks += 1
            self._decide_ms = 0.0
            await asyncio.sleep(max(0.0, self.poll_interval_s - (time.perf_counter() - started)))

    def _tick(self, now: float) -> None:
        """Everything but the decisions: pool size, stuck scrapes, lease upkeep. Nothing here waits."""
        if self._pool_read is None or self._pool_read.done():  # the GCS query runs in its own thread
            slots = self._pool_read.result() if self._pool_read is not None else None
            self.pool_slots = slots if slots is not None else self.pool_slots
            self._pool_read = self._pool_reader.submit(_pool_slots)
        for key, scraper in self._scrapers.items():
            source = self.sources.get(key)
            if source is None or scraper.started_s is None:
                continue
            # Blocked where no timeout reaches (a stuck thread): without fresh telemetry there is no headroom.
            in_flight_s = time.monotonic() - scraper.started_s
            if in_flight_s > STUCK_AFTER_TIMEOUTS * getattr(source, "timeout_s", 1.0):
                scraper.stuck = True
                self._on_sample(key, Sample.failed(now, f"scrape in flight for {in_flight_s:.1f} s, "
                                                        f"{STUCK_AFTER_TIMEOUTS}x its timeout: the scrape is stuck"))
        # A tick this late means this process stalled: workers' heartbeats may be queued behind it.
        stalled = self._last_tick_s is not None and now - self._last_tick_s > self.poll_interval_s + HUNG_STALL_S
        self._last_tick_s = now
        for entry in self.jobs.values():
            entry.lease.poll_ready()
            entry.lease.expire(now)
            if stalled:
                entry.lease.restart_clocks(now)
            for slot in entry.lease.hung(now):
                entry.hung += 1
                log.warning("job %s: the worker in slot %s sent no heartbeat for %.0f s; its group is removed and "
                            "a fresh one takes its place", entry.job, slot, entry.lease.hung_s)
            self._note_release(entry, now)
            self._notify(entry)

    def _decide_pooled(self, key: str, members: list[JobEntry], sample: Sample) -> None:
        """One law decision for the serving cluster behind ``key``, divided among its jobs by priority."""
        governed = [e for e in members if not e.manual and not e.window_closed and e.phase == "training"]
        cfg = pooled_config([e.law for e in governed or members], self.pool_slots)
        state = _training_clock(clamp_state(self.laws.get(key, LawState()), cfg), governed, sample.time_s)
        self.laws[key], pooled = decide(state, sample, cfg)
        # Read the serving side every refresh only while the law needs it: each read costs serving CPU.
        set_pace(self.sources.get(key), read_every_s(self.laws[key], pooled, sample, cfg))
        shares = divide(min(pooled.workers, cfg.max_workers), pooled.rows_per_s,
                        [Claim(e.job, e.priority, e.law.max_workers, e.law.max_rows_per_s, e.law.floor_rows_per_s)
                         for e in governed])
        for entry in members:
            if entry.manual:
                d = Directive(Level.PAUSE, 0, 0.0, Reason.MANUAL_PAUSE, pooled.slack)
            elif entry.window_closed:
                d = Directive(Level.PAUSE, 0, 0.0, Reason.WINDOW_END, pooled.slack)
            elif entry.phase != "training":  # no workers to share: only whether serving has room for the driver's work
                d = pooled if pooled.level is Level.PAUSE else Directive(Level.RUN, 0, 0.0, pooled.reason, pooled.slack)
            else:
                d = job_directive(pooled, shares[entry.job], entry.law, entry.directive.level)
            self._apply(entry, replace(d, impact=pooled.impact), sample)

    def _apply(self, entry: JobEntry, d: Directive, sample: Sample) -> None:
        """Make ``d`` the job's directive and log it with the sample behind it."""
        before = entry.directive.level
        entry.directive, entry.sample = d, sample
        now = time.time()
        if d.level is Level.PAUSE and before is not Level.PAUSE and entry.started:
            entry.pauses += 1
            self._metrics.paused(entry.job)
            active = entry.lease.active_count() > 0  # no worker steps: nothing to time
            entry.pause_started_s, entry.pause_decided_s = (sample.time_s, now) if active else (None, None)
            entry.stopped_slots, entry.stopped_at_s = set(), None
        if d.reason is Reason.RESUME:
            if entry.started:
                self._metrics.resumed(entry.job)
            entry.resumes += int(entry.started)
            entry.started = True
        entry.lease.resize(min(d.workers, entry.law.max_workers) if entry.phase == "training" else 0, now)
        entry.lease.poll_ready()
        self._note_release(entry, now)
        self._notify(entry)
        entry.decisions.append(dict(d.as_dict(), t=sample.time_s, job=entry.job, p99_ms=sample.p99_ms, rps=sample.rps,
                                    utilization=sample.utilization, error=sample.error, lease=len(entry.lease),
                                    in_flight=sample.in_flight, phase=entry.phase,
                                    active=entry.lease.active_count(), priority=entry.priority, impact=d.impact))
        if len(entry.decisions) == entry.decisions.maxlen:
            entry.decisions_base += 1

    def _note_release(self, entry: JobEntry, now: float) -> None:
        """PAUSE decided -> every worker stopped and checkpointed: that interval is the reaction time.
        The read of the telemetry that showed the loss comes before it and is kept beside it (``reads_s``):
        a read of Ray's metrics endpoint took 0.2-0.65 s in a benchmark run, the workers 0.01-0.03 s more."""
        if entry.pause_started_s is not None and entry.lease.active_count() == 0:
            self._note_stop(entry, now)  # a worker that never said so (idle between rounds, gone) stopped by now
            decided = entry.pause_decided_s if entry.pause_decided_s is not None else entry.pause_started_s
            entry.reads_s.append(decided - entry.pause_started_s)  # a triple per released pause
            entry.stops_s.append(entry.stopped_at_s - decided)
            entry.reactions_s.append(now - decided)
            self._metrics.reaction(entry.job, entry.reactions_s[-1])
            entry.pause_started_s = entry.pause_decided_s = None

    def _note_stop(self, entry: JobEntry, now: float) -> None:
        """PAUSE decided -> the last step of every worker ended: from then on the job takes no CPU for
        training; what remains of its reaction (the state serialised and returned, the driver's merge,
        the slot handed back) is the job's own, at its workers' priority."""
        if entry.pause_started_s is None or entry.stopped_at_s is not None:
            return
        if entry.lease.active_slots() <= entry.stopped_slots:
            entry.stopped_at_s = now

    def _summary(self, entry: JobEntry) -> dict:
        d, s = entry.directive, entry.sample
        return {"job": entry.job, "priority": entry.priority, "pool_slots": self.pool_slots,
                "level": d.level.value, "reason": d.reason.value, "workers": d.workers,
                "rows_per_s": d.rows_per_s, "slack": d.slack, "lease": len(entry.lease),
                "active": entry.lease.active_count(), "p99_ms": s.p99_ms if s else None,
                "rps": s.rps if s else None, "error": s.error if s else None, "manual": entry.manual,
                "phase": entry.phase, "in_flight": s.in_flight if s else None,
                "pauses": entry.pauses, "resumes": entry.resumes, "reactions_s": list(entry.reactions_s),
                "stops_s": list(entry.stops_s), "reads_s": list(entry.reads_s), "workers_hung": entry.hung, "progress": dict(entry.progress)}

    def _record(self, entry: JobEntry) -> dict:
        return dict(self._summary(entry), decisions=list(entry.decisions))

    # ---- surviving a restart (runtime/control/governor_state.py) ---------------------------------------
    def _persist(self) -> None:
        """Save every job's record, when anything in them changed since the last save."""
        records = {name: _restart_record(e, self.laws.get(e.source_key, LawState())) for name, e in self.jobs.items()}
        if (self.poll_interval_s, records) == self._saved:  # most ticks change nothing worth keeping: no write
            return
        try:
            self._store.save(encode(self.poll_interval_s, records))
            self._saved = (self.poll_interval_s, records)
        except Exception:  # GCS busy: the change is applied in memory; the next tick saves it again
            log.warning("cannot save the governor's state; retrying on the next tick", exc_info=True)

    def _recover(self) -> None:
        """Start from the saved records: same leases, directives, priorities, law states, manual pauses, counters."""
        poll_interval_s, records = decode(self._store.load())
        self.poll_interval_s = poll_interval_s or self.poll_interval_s
        for name, record in records.items():
            try:
                self.jobs[name] = self._restore_entry(name, record)
            except Exception:  # one bad record must not cost the others their state
                log.exception("cannot restore job %s; its driver will register it again", name)
        self.recovered = sorted(self.jobs)
        for key in self.sources:  # the first scrape sets a baseline (histogram deltas need two scrapes)
            self._scrapers[key] = _Scraper(baseline_first=True)
        if self.recovered:
            log.warning("governor restarted: recovered %s", ", ".join(self.recovered))

    def _restore_entry(self, name: str, r: dict) -> JobEntry:
        key = source_key(r["serving"])
        if key not in self.sources:
            self.sources[key] = build_source(**r["serving"])
        lease = restore_lease(r["lease"], Lease(name, r["bundle"], r["drain_timeout_s"], r["park_s"], r.get("hung_s", 0.0)))
        self.laws[key] = law_state_from(r["state"])  # the pooled law of the job's serving cluster
        return JobEntry(name, LawConfig(**r["law"]), key, lease, priority=r.get("priority", 0),
                        directive=directive_from(r["directive"]),
                        reactions_s=list(r["reactions_s"]), stops_s=list(r.get("stops_s", [])), reads_s=list(r.get("reads_s", [])),
                        pause_started_s=r["pause_started_s"], pause_decided_s=r.get("pause_decided_s"), pauses=r["pauses"],
                        resumes=r["resumes"], started=r["started"], manual=r["manual"], phase=r.get("phase", "training"),
                        window_closed=r.get("window_closed", False), hung=r.get("hung", 0))


def _restart_record(entry: JobEntry, pooled: LawState) -> dict:
    """What a restarted governor needs to carry on with ``entry`` (plain JSON); ``pooled`` is the law
    state of the job's serving cluster, shared with the other jobs that watch it."""
    lease = entry.lease
    return {"law": vars(entry.law), "serving": json.loads(entry.source_key), "bundle": lease.bundle,
            "drain_timeout_s": lease.drain_timeout_s, "park_s": lease.park_s, "hung_s": lease.hung_s,
            "hung": entry.hung, "lease": lease_record(lease),
            "priority": entry.priority, "state": law_state_record(pooled), "directive": directive_record(entry.directive),
            "manual": entry.manual, "window_closed": entry.window_closed, "phase": entry.phase, "pauses": entry.pauses, "resumes": entry.resumes,
            "started": entry.started,
            "pause_started_s": entry.pause_started_s, "pause_decided_s": entry.pause_decided_s,
            "reactions_s": list(entry.reactions_s), "stops_s": list(entry.stops_s), "reads_s": list(entry.reads_s)}


class _Metrics:
    """The governor's own metrics, exported by Ray's metrics agent (``ray start --metrics-export-port``,
    which prefixes every name with ``ray_``) so Prometheus and Grafana can show them; see
    examples/grafana-dashboard.json and examples/alerts.yml. Prometheus conventions: base units
    (seconds, ratios), counters end in ``_total``, and the job's name is the label ``headroom_job`` (a
    ``job`` label would collide with Prometheus's own target label and arrive as ``exported_job``)."""

    LABEL = "headroom_job"

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = (self.LABEL,)
        self.level = Gauge("headroom_directive_level", "Directive level: 0 PAUSE, 1 THROTTLE, 2 RUN, -1 job ended",
                           tag_keys=tags)
        self.slack = Gauge("headroom_slack_ratio", "Latency slack (SLO - p99) / SLO behind the last decision",
                           tag_keys=tags)
        self.workers = Gauge("headroom_workers_active", "Workers computing in the job's lease", tag_keys=tags)
        self.rows = Gauge("headroom_allowed_rows_per_second", "Ingestion rate the governor allows", tag_keys=tags)
        self.p99 = Gauge("headroom_serving_p99_seconds", "Serving p99 latency (at the ingress) behind the last decision",
                         tag_keys=tags)
        self.in_flight = Gauge("headroom_serving_in_flight_requests", "Requests in flight at the ingress behind the "
                               "last decision", tag_keys=tags)
        self.ok = Gauge("headroom_telemetry_ok", "1 if the last sample was usable, else 0", tag_keys=tags)
        self.pauses = Counter("headroom_pauses", "Times the job was paused (exported as ..._total)", tag_keys=tags)
        self.resumes = Counter("headroom_resumes", "Times the job resumed (exported as ..._total)", tag_keys=tags)
        self.tick_errors = Counter("headroom_governor_tick_errors", "Governor ticks or decisions that raised "
                                   "(exported as ..._total)")
        self.tick_s = Histogram("headroom_governor_tick_seconds", "Duration of one governor tick",
                                boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
        self.reaction_s = Histogram("headroom_reaction_seconds", "PAUSE decided -> workers released",
                                    boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10], tag_keys=tags)

    def tick(self, tick_ms: float, entries) -> None:
        # Every gauge every tick: Ray (OpenTelemetry) forgets a gauge's value after each export, and
        # its metrics agent drops a series not set again within two export intervals.
        self.tick_s.observe(tick_ms / 1000.0)
        for e in entries:
            d, s = e.directive, e.sample
            tags = {self.LABEL: e.job}
            self.level.set(LEVEL_VALUE[d.level], tags)
            self.workers.set(e.lease.active_count(), tags)
            self.rows.set(d.rows_per_s, tags)
            self.ok.set(1.0 if s is not None and s.ok else 0.0, tags)
            if d.slack is not None:
                self.slack.set(d.slack, tags)
            if s is not None and s.p99_ms is not None:
                self.p99.set(s.p99_ms / 1000.0, tags)
            if s is not None and s.in_flight is not None:
                self.in_flight.set(s.in_flight, tags)

    def paused(self, job: str) -> None:
        self.pauses.inc(1.0, {self.LABEL: job})

    def resumed(self, job: str) -> None:
        self.resumes.inc(1.0, {self.LABEL: job})

    def error(self) -> None:
        self.tick_errors.inc(1.0)

    def forget(self, job: str) -> None:
        """A finished job: Ray cannot drop a series, so leave it at 'no workers, level -1 (not registered)'."""
        tags = {self.LABEL: job}
        self.level.set(-1, tags)
        self.workers.set(0, tags)
        self.rows.set(0, tags)
        self.ok.set(1, tags)

    def reaction(self, job: str, seconds: float) -> None:
        self.reaction_s.observe(seconds, {self.LABEL: job})


def source_key(serving: dict) -> str:
    """One telemetry source per distinct config: its canonical JSON (labels are a dict, so not a tuple)."""
    return json.dumps(serving, sort_keys=True)


def _safe_sample(source) -> Sample:
    try:
        return source.sample()
    except Exception as exc:  # a source must never raise; if one does, it means no headroom
        return Sample.failed(time.time(), f"source raised {type(exc).__name__}: {exc}")


def _pool_slots() -> int | None:
    """Slots of the training pool in the cluster now (a removed node takes its slots with it)."""
    try:
        return int(ray.cluster_resources().get(POOL_RESOURCE, 0))
    except Exception:  # GCS busy or restarting: keep the last known value
        return None


def get_or_create_governor(poll_interval_s: float = 0.25):
    """The cluster's one governor (detached, named); created on first use, on the head node: training
    nodes may be spot instances that come and go, and the governor must outlive them."""
    return Governor.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                            resources={HEAD_RESOURCE: 0.001}).remote(poll_interval_s)


def find_governor():
    """The running governor, or ``None``."""
    try:
        return ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:
        return None
