"""The control law: latency slack in, a directive for a training job out.

A pure function in the style of Heracles (Lo et al., ISCA 2015)::

    slack = (slo_p99_ms - p99_ms) / slo_p99_ms

beside two leading signals, each a slack of its own in the same units ("room left", 1 = idle): load
against the serving side's capacity, and the queue (requests in flight at the ingress) against
``queue_limit``. A queue builds the moment the replicas fall behind, before a p99 window shows the
damage, so it acts first. The law works on the tightest of the three.

- no usable telemetry, load above the ceiling, a queue past its limit, or slack below zero -> PAUSE
  (checkpoint and release); a source that read fine and saw no request at all is idle: full slack;
- after a pause, stay paused for ``cooldown_s`` and until slack is ample again (hysteresis);
- a pause because training hurt serving (SLO or queue) remembers the load it happened at and the rate
  that hurt: for ``load_memory_s``, at that load less a margin and above, the job trains at most half
  that rate, so it neither resumes into the same peak at the same rate nor runs into the next one (a
  learned Heracles load limit). Each further hurt halves the cap again; once it would fall below the
  floor, that load is a ceiling like ``max_utilization``: no training there at all;
- a resume starts at ``resume_fraction`` of the budget and grows; with ``impact_max_ratio``, a pause for
  the load alone (its ceiling) comes back at the whole budget: the guard measures the job's effect at
  the rate it runs (:func:`resume_rows_per_s`);
- small slack -> THROTTLE: no growth, and multiplicative shrink of rows/s and workers (with
  ``pause_first``, for a job on an accelerator: PAUSE instead, and resume at full rate: measured on an
  H200, training duty-cycled to 20 % of its time still took inference p99 to 4.8x);
- ample slack held for ``holddown_s`` -> grow additively, one step per hold-down;
- with ``impact_max_ratio``, the job's own effect is guarded too, not only the SLO (the phase-in /
  phase-out of Bubble-Flux, Yang et al., ISCA 2013). An SLO set well above the tail leaves a job all
  the slack it wants; this keeps it to what users would barely notice. At least every
  ``impact_every_s``, and whenever the load rises out of ``impact_load_band`` of every load measured so
  (a fall waits for the period: :func:`_reference_due`), the job pauses (``MEASURING``, at most
  ``impact_pause_s``) so the law sees serving without it, and comes back at the rate it ran (at a
  resume's, if the load rose out of the band meanwhile: its last two seconds, :func:`load_risen`). The
  requests that finished (a histogram's new counts, settled) are pooled per side: the
  ``impact_quantile`` with the job over the same quantile without it, at about the same load, is its
  *impact*, judged once each side has ``impact_min_requests``. Surely above the ratio (its lower
  confidence bound, from each quantile's sampling error, is above it): shrink, at the floor pause
  (``IMPACT``, no load learnt); above it but not surely: hold. Growth waits for a measured impact
  within the ratio and stops
  short of a rate that went over it until the next measure. When even the floor is over it, the job
  stays out for ``impact_every_s`` (``IMPACT``) unless the load falls out of the band below.

No clocks, no I/O: the time is ``sample.time_s``, the memory is the frozen :class:`LawState` the caller
stores and passes back. Every directive carries a :class:`Reason`.

>>> cfg = LawConfig(slo_p99_ms=50, max_workers=2, max_rows_per_s=1000)
>>> state, d = decide(LawState(), Sample(time_s=0, p99_ms=10, rps=5), cfg)
>>> d.level, d.reason, d.workers, d.rows_per_s  # a resume starts small and grows one step per hold-down
(<Level.THROTTLE: 'THROTTLE'>, <Reason.RESUME: 'RESUME'>, 1, 250.0)
>>> for t in (1, 10):  # slack held past the hold-down
...     state, d = decide(state, Sample(time_s=t, p99_ms=10, rps=5), cfg)
>>> d.reason, d.rows_per_s
(<Reason.GROW: 'GROW'>, 500.0)
"""

from __future__ import annotations

import enum
import math
import statistics
from dataclasses import dataclass, replace
from functools import partial

from runtime.control.sample import Sample, quantile_from_buckets, sum_buckets


class Level(str, enum.Enum):
    RUN = "RUN"
    THROTTLE = "THROTTLE"
    PAUSE = "PAUSE"


class Reason(str, enum.Enum):
    TELEMETRY_MISSING = "TELEMETRY_MISSING"  # source failed or said nothing usable
    TELEMETRY_STALE = "TELEMETRY_STALE"  # newest observation older than the bound
    LOAD_CEILING = "LOAD_CEILING"  # serving load above the utilization ceiling
    QUEUE_LIMIT = "QUEUE_LIMIT"  # requests in flight at the ingress past queue_limit
    SLO_VIOLATED = "SLO_VIOLATED"  # negative slack
    IMPACT = "IMPACT"  # the job's measured impact (latency with it / without it) is above impact_max_ratio
    MEASURING = "MEASURING"  # a short pause to measure serving without the job (impact_max_ratio)
    COOLDOWN = "COOLDOWN"  # paused recently; wait before resuming
    LOAD_MEMORY = "LOAD_MEMORY"  # the load is near where training last hurt serving: capped at half that rate, or paused
    HYSTERESIS = "HYSTERESIS"  # paused; slack positive but not yet ample
    SLACK_LOW = "SLACK_LOW"  # small slack: shrink multiplicatively
    HOLD = "HOLD"  # moderate slack, or ample but not for long enough: keep the level
    GROW = "GROW"  # ample slack held for the hold-down: grow additively
    AT_MAX = "AT_MAX"  # ample slack, already at the budget
    RESUME = "RESUME"  # paused -> running again at the resume level
    MANUAL_PAUSE = "MANUAL_PAUSE"  # an operator paused the job
    WINDOW_END = "WINDOW_END"  # the job's planned window ended: it yields until its next one (runtime.windows.scheduler)
    PRIORITY = "PRIORITY"  # the pooled headroom went to higher-priority jobs (runtime.control.shares)


@dataclass(frozen=True)
class LawConfig:
    slo_p99_ms: float
    max_workers: int = 1
    max_rows_per_s: float = 1000.0
    min_rows_per_s: float = 0.0  # 0 means: 5 % of the maximum
    max_utilization: float = 0.85  # Heracles' load ceiling
    queue_limit: float | None = None  # requests in flight at the ingress that leave no room (None: not watched)
    stale_after_s: float = 5.0
    pause_below_slack: float = 0.0
    shrink_below_slack: float = 0.10
    grow_above_slack: float = 0.30
    shrink_factor: float = 0.5
    grow_step_fraction: float = 0.25  # additive step, as a fraction of max_rows_per_s
    resume_fraction: float = 0.25  # rows/s after a resume, as a fraction of max_rows_per_s
    holddown_s: float = 2.0
    cooldown_s: float = 3.0
    load_memory_s: float = 600.0  # how long the load at which training hurt serving stays a ceiling (0: never)
    load_margin: float = 0.9  # that ceiling is this fraction of the remembered load
    resume_load_fraction: float = 0.9  # after a pause, resume only below this fraction of the load ceiling
    load_learn_after_s: float = 3.0  # a violation this soon into training (a worker starting) teaches no load; the
    # governor holds running_since_s at now until a worker reports trained rows (a cold start can outlast this)
    pause_first: bool = False  # an accelerator: never THROTTLE (a duty-cycled GPU job still hurts the tail); pause
    impact_max_ratio: float | None = None  # training may raise serving's latency quantile to this multiple of it without the job
    impact_quantile: float = 0.9  # ... that quantile, of hundreds of requests pooled (a p99 of so few is mostly noise)
    impact_min_requests: int = 200  # requests on each side before an impact is judged
    impact_every_s: float = 45.0  # serving without the job is measured, in a pause, at least this often
    impact_pause_s: float = 8.0  # that pause at most: impact_settle_s to settle, then min_requests or the rest of it
    impact_settle_s: float = 3.0  # requests that finish this soon after the job starts, stops or changes rate are not
    # counted: a pause's own work (the checkpoint, the workers' stop) and Ray's ~1-s metrics lag
    impact_window_s: float = 20.0  # the requests at the current rate of the last this many seconds are pooled
    impact_load_band: float = 0.25  # ... against requests without the job at a load within this fraction of the load now
    impact_confidence: float = 0.8  # shrink for an impact above the ratio with this one-sided confidence (a quantile of
    # a few hundred requests is itself uncertain); above the ratio but not surely: no growth, no shrink
    impact_noise: float = 0.12  # the spread (SD of the log) of a with/without ratio beyond sampling. Adjacent 10-s
    # windows of one load and one job: 0.11-0.14 here, ~0.07 of it sampling (benchmarks.standing_cost); the guard's
    # two sides lie up to minutes apart, so more
    calm_read_s: float = 3.0  # while nothing moves and every bound is far: a fresh reading this often (0: every refresh)

    @property
    def floor_rows_per_s(self) -> float:
        return self.min_rows_per_s or 0.05 * self.max_rows_per_s

    def remembers(self, state: "LawState", now: float) -> bool:
        """A load at which training hurt serving is still remembered."""
        return state.hurt_utilization is not None and state.hurt_at_s is not None and now - state.hurt_at_s < self.load_memory_s

    def rate_cap(self, state: "LawState", now: float) -> float | None:
        """Rows/s allowed at and above the remembered load: half the rate that hurt there (0 when that
        rate is unknown, a state saved before rates were remembered). ``None``: nothing remembered."""
        if not self.remembers(state, now):
            return None
        return 0.0 if state.hurt_rows_per_s is None else self.shrink_factor * state.hurt_rows_per_s

    def ceiling(self, state: "LawState", now: float) -> float:
        """The utilization ceiling now: ``max_utilization``, or the remembered load less a margin once
        its rate cap is below the floor (or always, with ``pause_first``: a GPU is not duty-cycled)."""
        cap = self.rate_cap(state, now)
        if cap is None or (cap >= self.floor_rows_per_s and not self.pause_first):
            return self.max_utilization
        return min(self.max_utilization, self.load_margin * state.hurt_utilization)

    def rows_allowed(self, state: "LawState", utilization: float | None, now: float) -> float:
        """The most rows/s at this load: ``max_rows_per_s``, or the remembered cap within the margin of
        the load where training hurt (a banned load is the ceiling's business, not this)."""
        cap = self.rate_cap(state, now)
        if (cap is None or utilization is None or self.ceiling(state, now) < self.max_utilization
                or utilization < self.load_margin * state.hurt_utilization):
            return self.max_rows_per_s
        return max(self.floor_rows_per_s, min(self.max_rows_per_s, cap))


@dataclass(frozen=True)
class LawState:
    """What the law remembers between ticks. The initial state is paused with no cool-down."""

    level: Level = Level.PAUSE
    workers: int = 0
    rows_per_s: float = 0.0
    paused_at_s: float | None = None
    ample_since_s: float | None = None
    last_grow_s: float | None = None
    hurt_utilization: float | None = None  # the load at the last pause caused by training hurting serving
    hurt_at_s: float | None = None
    hurt_rows_per_s: float | None = None  # the rate training ran at when it hurt serving at that load
    running_since_s: float | None = None  # when the job last resumed (a violation right after it is the start-up)
    paused_for: Reason | None = None  # what took the running job out (a later reason while paused does not change
    # it, except after a telemetry gap: then the next one seen)
    # impact_max_ratio's memory (not saved across a governor restart: a new governor measures again)
    reference: tuple = ()  # ((time_s, new counts, load, utilization), ...) settled readings with the job paused
    running: tuple = ()  # ((time_s, new counts, load, utilization), ...) settled readings at the current rate and workers
    changed_at_s: float | None = None  # when the job last paused, resumed or changed rate (samples settle from here)
    loads: tuple = ()  # ((time_s, rps, utilization), ...) the readings of the last LOAD_SMOOTH_S: the load is their median
    measuring_rows_per_s: float | None = None  # in a MEASURING pause: the rate (and workers) to go back to
    measuring_workers: int = 0
    measuring_load: float | None = None  # ... and the load that rate ran at
    impact_cap_rows_per_s: float | None = None  # a rate whose impact was above the ratio: no growth to it until measured again
    impact_hold_until_s: float | None = None  # even the floor was over the ratio: paused till then, unless the load falls
    impact_hold_load: float | None = None  # ... below this, less the load band
    steady_since_s: float | None = None  # the directive (level, rate, workers) has stood since then: read_every_s


@dataclass(frozen=True)
class Directive:
    level: Level
    workers: int
    rows_per_s: float
    reason: Reason
    slack: float | None = None
    impact: float | None = None  # impact_max_ratio: the job's measured impact this decision saw (None: not measured)

    def as_dict(self) -> dict:
        return {"level": self.level.value, "workers": self.workers, "rows_per_s": self.rows_per_s,
                "reason": self.reason.value, "slack": self.slack}


def slack_of(sample: Sample, cfg: LawConfig) -> float | None:
    """Latency slack in [-inf, 1]; ``None`` when the sample carries no latency (1 when it saw no request)."""
    if sample.idle:
        return 1.0
    if sample.p99_ms is None or math.isnan(sample.p99_ms):
        return None
    if math.isinf(sample.p99_ms):  # an unbounded tail is the worst latency there is, not "unknown"
        return -math.inf if sample.p99_ms > 0 else 1.0
    return (cfg.slo_p99_ms - sample.p99_ms) / cfg.slo_p99_ms


def decide(state: LawState, sample: Sample, cfg: LawConfig) -> tuple[LawState, Directive]:
    """One tick of the law. Stages run in order; the first that decides wins."""
    now = sample.time_s
    slack = slack_of(sample, cfg)
    state = _observe(state, sample, cfg, now)
    impact = impact_estimate(state, cfg, now) if cfg.impact_max_ratio is not None else None
    for stage in (_must_pause, _stay_paused, _capped, partial(_impact, impact=impact), _shrink,
                  partial(_grow_or_hold, impact=impact)):
        decided = stage(state, sample, slack, cfg, now)
        if decided is not None:
            new = _carry_steady(state, _carry_impact(state, decided[0], cfg, now), now)
            return new, replace(decided[1], impact=None if impact is None else impact.ratio)
    raise AssertionError("unreachable: _grow_or_hold always decides")  # pragma: no cover


TELEMETRY_GAPS = (Reason.TELEMETRY_MISSING, Reason.TELEMETRY_STALE)  # pauses that say nothing of the job or the load


def _pause(state: LawState, now: float, reason: Reason, slack: float | None, sample: Sample | None = None,
           cfg: LawConfig | None = None):
    # Every violation restarts the cool-down: resuming needs cooldown_s without one. Telemetry that
    # goes missing while the job is already out says nothing about interference: no new cool-down.
    paused_at = now
    if state.level is Level.PAUSE and reason in TELEMETRY_GAPS:
        paused_at = state.paused_at_s
    hurt_util, hurt_at, hurt_rows = state.hurt_utilization, state.hurt_at_s, state.hurt_rows_per_s
    learn_after = cfg.load_learn_after_s if cfg is not None else 0.0
    if (reason in (Reason.SLO_VIOLATED, Reason.QUEUE_LIMIT) and state.level is not Level.PAUSE
            and sample is not None and sample.utilization is not None
            and (state.running_since_s is None or now - state.running_since_s >= learn_after)):
        # Steady training hurt serving at this load and rate: remember both. A memory still live keeps
        # the lowest of each (hurting at a load and rate says as much of any load and rate above them).
        if cfg.remembers(state, now):
            hurt_util = min(state.hurt_utilization, sample.utilization)
            hurt_rows = None if state.hurt_rows_per_s is None else min(state.hurt_rows_per_s, state.rows_per_s)
        else:
            hurt_util, hurt_rows = sample.utilization, state.rows_per_s
        hurt_at = now
    # What took the job out stays its reason while it is out, unless that was a gap in the telemetry, which
    # says nothing of the job or the load: the next reason seen (the peak's ceiling, say) is the pause's.
    kept = state.level is Level.PAUSE and state.paused_for not in (None, *TELEMETRY_GAPS)
    paused_for = state.paused_for if kept else reason
    new = LawState(level=Level.PAUSE, workers=0, rows_per_s=0.0, paused_at_s=paused_at, hurt_utilization=hurt_util,
                   hurt_at_s=hurt_at, hurt_rows_per_s=hurt_rows, impact_cap_rows_per_s=state.impact_cap_rows_per_s,
                   impact_hold_until_s=state.impact_hold_until_s, impact_hold_load=state.impact_hold_load,
                   paused_for=paused_for)
    return new, Directive(Level.PAUSE, 0, 0.0, reason, slack)


def _must_pause(state, sample: Sample, slack, cfg: LawConfig, now):
    util = sample.utilization
    util_missing = util is None or math.isnan(util)
    if sample.error is not None or (slack is None and util_missing) or (util is not None and util_missing):
        return _pause(state, now, Reason.TELEMETRY_MISSING, slack)
    if not sample.staleness_s <= cfg.stale_after_s:  # NaN (unknown age) counts as stale
        return _pause(state, now, Reason.TELEMETRY_STALE, slack)
    if sample.utilization is not None and sample.utilization > cfg.ceiling(state, now):
        if state.level is Level.PAUSE and sample.utilization <= cfg.max_utilization:
            return _pause(state, now, Reason.LOAD_MEMORY, slack)
        return _pause(state, now, Reason.LOAD_CEILING, slack)
    queue = queue_slack(sample, cfg)
    if queue is not None and queue < cfg.pause_below_slack:
        return _pause(state, now, Reason.QUEUE_LIMIT, slack, sample, cfg)
    if slack is not None and slack < cfg.pause_below_slack:
        return _pause(state, now, Reason.SLO_VIOLATED, slack, sample, cfg)
    return None


def queue_slack(sample: Sample, cfg: LawConfig) -> float | None:
    """Room left in the ingress queue, ``(queue_limit - in_flight) / queue_limit``; ``None`` if not watched."""
    if cfg.queue_limit is None or sample.in_flight is None or math.isnan(sample.in_flight):
        return None
    return (cfg.queue_limit - sample.in_flight) / cfg.queue_limit


def _effective_slack(sample: Sample, slack, cfg: LawConfig, state: LawState | None = None, *,
                     load_band: bool = False) -> float:
    """The tightest of latency, utilization and queue slack (each is 'room left', 1 = idle).

    ``load_band`` (growth): a serving *load* (requests against capacity, a sample with ``rps``) does
    not move with the job, so it bounds growth as a band, not as a slack: room while the load is at
    most ``resume_load_fraction`` of its ceiling (the resume's own band), none above. As a slack, the
    growth threshold kept a job that resumed after the peak at its resume rate (a quarter) until the
    load fell to 70 % of its ceiling: in a full benchmark run, most of each day's decline. A busy
    fraction with no request rate (host CPU, where the job's own use counts) stays a slack. Shrinking
    judges a load by its median over ``LOAD_SMOOTH_S`` (one reading moves +-50 % with Ray's refresh);
    the ceiling's pause still acts on a single reading.
    """
    candidates = [] if slack is None else [slack]
    room = _load_room(sample, cfg, state, load_band=load_band)
    if room is not None:
        candidates.append(room)
    queue = queue_slack(sample, cfg)
    if queue is not None:
        candidates.append(queue)
    return min(candidates)


def _load_room(sample: Sample, cfg: LawConfig, state: LawState | None, *, load_band: bool) -> float | None:
    """The utilization's term of :func:`_effective_slack`: a busy fraction's slack against the ceiling,
    or for a serving load (a sample with ``rps``) its last seconds' median's, or with ``load_band`` 1
    inside the resume band and 0 above it."""
    if sample.utilization is None:
        return None
    ceiling = cfg.max_utilization if state is None else cfg.ceiling(state, sample.time_s)
    if state is None or sample.rps is None:
        return (ceiling - sample.utilization) / ceiling
    if load_band:
        return 1.0 if in_resume_band(state, sample, cfg) else 0.0
    return (ceiling - load_utilization(state, sample)) / ceiling


def in_resume_band(state: LawState, sample: Sample, cfg: LawConfig) -> bool | None:
    """The load (:func:`resume_utilization`) is at most ``resume_load_fraction`` of the ceiling now:
    where a paused job may resume, a running one grow, and a measured rate keep on a rise. ``None``:
    the reading carries no load.

    >>> cfg = LawConfig(slo_p99_ms=50, max_utilization=0.5)  # the band ends at 0.45
    >>> [in_resume_band(LawState(), Sample(time_s=0, utilization=u), cfg) for u in (0.4, 0.5, None)]
    [True, False, None]
    """
    util = resume_utilization(state, sample)
    return None if util is None else util <= cfg.resume_load_fraction * cfg.ceiling(state, sample.time_s)


def _stay_paused(state: LawState, sample, slack, cfg: LawConfig, now):
    if state.level is not Level.PAUSE:
        return None
    measuring = cfg.impact_max_ratio is not None and not sample.idle and not reference_ready(state, cfg, now, load_now(state))
    if state.measuring_rows_per_s is not None:  # a MEASURING pause: back to the same rate once measured
        if measuring:
            return state, Directive(Level.PAUSE, 0, 0.0, Reason.MEASURING, slack)
        rows, workers = state.measuring_rows_per_s, max(1, state.measuring_workers)
        load, was = load_risen(state, now), state.measuring_load
        if load is not None and was is not None and load > was and not _near(load, was, cfg) and (
                not in_resume_band(state, sample, cfg)):
            # the load rose out of the band while serving was measured, past where the law would grow: that
            # rate never ran at this load (on a climb to the peak it is the rate that builds the queue), so it
            # starts over from a resume's. A rise that leaves room to grow (the growth band) keeps the rate,
            # which the law would grow back to anyway, one judgement a step (in a full benchmark run, 7-9 s
            # each at a quarter and a half of the budget, on a rise from 0.20 to 0.27 of capacity)
            rows, workers = min(rows, max(cfg.floor_rows_per_s, cfg.resume_fraction * cfg.max_rows_per_s)), 1
        new = replace(state, level=_level_for(rows, cfg), workers=workers, rows_per_s=rows, last_grow_s=now,
                      running_since_s=now, measuring_rows_per_s=None, measuring_workers=0, measuring_load=None)
        return new, Directive(new.level, workers, rows, Reason.RESUME, slack)
    if state.paused_at_s is not None and now - state.paused_at_s < cfg.cooldown_s:
        return state, Directive(Level.PAUSE, 0, 0.0, Reason.COOLDOWN, slack)
    if state.impact_hold_until_s is not None and now < state.impact_hold_until_s:
        load = load_now(state)
        if load is None or state.impact_hold_load is None or load >= (1 - cfg.impact_load_band) * state.impact_hold_load:
            return state, Directive(Level.PAUSE, 0, 0.0, Reason.IMPACT, slack)
    # Resume needs ample latency and queue slack, and a load a margin below the ceiling (a band of its
    # own: the latency band would keep the job out until the load fell to 70 % of its ceiling).
    room = [s for s in (slack, queue_slack(sample, cfg)) if s is not None]
    if (room and min(room) < cfg.grow_above_slack) or in_resume_band(state, sample, cfg) is False:
        return state, Directive(Level.PAUSE, 0, 0.0, Reason.HYSTERESIS, slack)
    if measuring:  # no recent measure of serving without the job: take one before it starts
        return state, Directive(Level.PAUSE, 0, 0.0, Reason.MEASURING, slack)
    rows = min(resume_rows_per_s(state, cfg), cfg.rows_allowed(state, resume_utilization(state, sample), now))
    if state.impact_cap_rows_per_s is not None:  # paused for its impact: back at the floor
        rows = min(rows, max(cfg.floor_rows_per_s, cfg.shrink_factor * state.impact_cap_rows_per_s))
    new = LawState(level=_level_for(rows, cfg), workers=1, rows_per_s=rows, last_grow_s=now,
                   hurt_utilization=state.hurt_utilization, hurt_at_s=state.hurt_at_s,
                   hurt_rows_per_s=state.hurt_rows_per_s, running_since_s=now,
                   impact_cap_rows_per_s=state.impact_cap_rows_per_s)
    return new, Directive(new.level, 1, rows, Reason.RESUME, slack)


FOR_THE_LOAD = frozenset({Reason.LOAD_CEILING, Reason.LOAD_MEMORY})  # pauses the load alone called


def resume_rows_per_s(state: LawState, cfg: LawConfig) -> float:
    """The rate a resume starts at: ``resume_fraction`` of the budget, growing one step per hold-down;
    the whole budget with ``pause_first`` (a GPU is not duty-cycled), and with ``impact_max_ratio``
    after a pause for the load alone (:data:`FOR_THE_LOAD`: its ceiling, the learnt one included).

    With the guard, the job's effect is measured at the rate it runs, and a rate surely over the ratio
    is halved at its first judgement; a ramp only spends the quiet hours: in a full benchmark run the
    job came back from each peak at a quarter of its budget and held there 7-9 s for each step's
    judgement (200 requests at ~50 req/s, after 3 s to settle), so the day ended before it was back at
    full rate, while the judgements at a quarter (1.15-1.25x) read no lower than those at three
    quarters (0.82-0.94x): a ``SCHED_IDLE`` worker's rate is not what moves serving's tail. A pause
    the job caused (the SLO, the queue, its impact) still comes back at ``resume_fraction``, below the
    load it learnt (:meth:`LawConfig.rows_allowed`); so does one that lost sight of serving (telemetry),
    a first start, and a governor's restart (which keeps no reason).

    >>> cfg = LawConfig(slo_p99_ms=50, max_rows_per_s=1000, impact_max_ratio=1.1)
    >>> reasons = (Reason.LOAD_CEILING, Reason.SLO_VIOLATED, Reason.TELEMETRY_MISSING, None)
    >>> [resume_rows_per_s(LawState(paused_for=r), cfg) for r in reasons]
    [1000.0, 250.0, 250.0, 250.0]
    >>> resume_rows_per_s(LawState(paused_for=Reason.LOAD_CEILING), replace(cfg, impact_max_ratio=None))
    250.0
    """
    if cfg.pause_first or (cfg.impact_max_ratio is not None and state.paused_for in FOR_THE_LOAD):
        return float(cfg.max_rows_per_s)
    return max(cfg.floor_rows_per_s, cfg.resume_fraction * cfg.max_rows_per_s)


def _capped(state: LawState, sample, slack, cfg: LawConfig, now):
    """Running faster than the remembered load allows (the load rose to where training hurt): down to the cap."""
    allowed = cfg.rows_allowed(state, sample.utilization, now)
    if state.rows_per_s <= allowed:
        return None
    new = replace(state, level=_level_for(allowed, cfg), rows_per_s=allowed, ample_since_s=None)
    return new, Directive(new.level, state.workers, allowed, Reason.LOAD_MEMORY, slack)


def _impact(state: LawState, sample: Sample, slack, cfg: LawConfig, now, impact: Impact | None):
    """``impact_max_ratio``: measure serving without the job when that measure is due; shrink (at the
    floor, pause) while the job's measured impact (:func:`impact_estimate` of this tick) is surely above it."""
    if cfg.impact_max_ratio is None or state.level is Level.PAUSE or sample.idle:
        return None
    settled = state.changed_at_s is None or now - state.changed_at_s >= cfg.impact_pause_s
    # nor while the job's workers still start: the governor holds running_since_s at now until a worker
    # reports trained rows, and a pause then stops a worker mid-start for nothing it could measure (in a
    # make demo run, a measure 0.5 s after a cold worker came up took 2 s to release it)
    started = state.running_since_s is None or now - state.running_since_s >= cfg.impact_settle_s
    if settled and started and _reference_due(state, cfg, now, load_now(state)):  # never right after a resume: it would stall
        new = LawState(level=Level.PAUSE, paused_at_s=now, hurt_utilization=state.hurt_utilization,
                       hurt_at_s=state.hurt_at_s, hurt_rows_per_s=state.hurt_rows_per_s,
                       measuring_rows_per_s=state.rows_per_s, measuring_workers=state.workers,
                       measuring_load=load_now(state))
        return new, Directive(Level.PAUSE, 0, 0.0, Reason.MEASURING, slack)
    if impact is None or impact.low <= cfg.impact_max_ratio:  # within the ratio, or not surely above it
        return None
    if cfg.pause_first or (state.rows_per_s <= cfg.floor_rows_per_s and state.workers <= 1):
        # a small, measured effect: no load is learnt from it (that is for the SLO); the job comes back
        # at the floor after the cool-down and grows no further until serving is measured again
        new, d = _pause(state, now, Reason.IMPACT, slack)
        return replace(new, impact_cap_rows_per_s=cfg.floor_rows_per_s, impact_hold_until_s=now + cfg.impact_every_s,
                       impact_hold_load=load_now(state)), d
    new, d = _shrunk(state, Reason.IMPACT, slack, cfg)
    return replace(new, impact_cap_rows_per_s=state.rows_per_s), d


def _shrink(state: LawState, sample, slack, cfg: LawConfig, now):
    if _effective_slack(sample, slack, cfg, state) >= cfg.shrink_below_slack:
        return None
    if cfg.pause_first:  # on a GPU, less of the job is no less in the way: out, with the usual cool-down
        return _pause(state, now, Reason.SLACK_LOW, slack)
    return _shrunk(state, Reason.SLACK_LOW, slack, cfg)


def _shrunk(state: LawState, reason: Reason, slack, cfg: LawConfig):
    rows = max(cfg.floor_rows_per_s, state.rows_per_s * cfg.shrink_factor)
    workers = max(1, math.floor(state.workers * cfg.shrink_factor)) if state.workers > 1 else 1
    new = replace(state, level=Level.THROTTLE, workers=workers, rows_per_s=rows, ample_since_s=None)
    return new, Directive(Level.THROTTLE, workers, rows, reason, slack)


def _grow_or_hold(state: LawState, sample, slack, cfg: LawConfig, now, impact: Impact | None = None):
    eff = _effective_slack(sample, slack, cfg, state, load_band=True)
    if eff < cfg.grow_above_slack:
        new = replace(state, ample_since_s=None)
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.HOLD, slack)
    ample_since = state.ample_since_s if state.ample_since_s is not None else now
    last_change = max(ample_since, state.last_grow_s if state.last_grow_s is not None else ample_since)
    if now - last_change < cfg.holddown_s:
        new = replace(state, ample_since_s=ample_since)
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.HOLD, slack)
    if state.rows_per_s >= cfg.max_rows_per_s and state.workers >= cfg.max_workers:
        new = replace(state, ample_since_s=ample_since)
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.AT_MAX, slack)
    if (cfg.impact_max_ratio is not None and not sample.idle and _impact_pending(state, cfg, now)
            and reference_in_hand(state, cfg, now)):
        new = replace(state, ample_since_s=ample_since)  # grow only on a measured impact within the ratio
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.HOLD, slack)
    if impact is not None and not sample.idle and impact.ratio > cfg.impact_max_ratio:
        new = replace(state, ample_since_s=ample_since)  # above the ratio, not surely: no shrink, and no growth either
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.IMPACT, slack)
    if state.impact_cap_rows_per_s is not None and (
            state.rows_per_s + cfg.grow_step_fraction * cfg.max_rows_per_s >= state.impact_cap_rows_per_s):
        new = replace(state, ample_since_s=ample_since)  # the next step would be the rate that hurt: hold till measured again
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.IMPACT, slack)
    allowed = cfg.rows_allowed(state, sample.utilization, now)
    if allowed < cfg.max_rows_per_s and state.rows_per_s >= allowed:  # at the remembered load's cap: no growth
        new = replace(state, ample_since_s=ample_since)
        return new, Directive(state.level, state.workers, state.rows_per_s, Reason.LOAD_MEMORY, slack)
    # Grow rows/s first; add a worker only once the current workers run at full rate.
    if state.rows_per_s < cfg.max_rows_per_s:
        rows, workers = min(allowed, state.rows_per_s + cfg.grow_step_fraction * cfg.max_rows_per_s), state.workers
    else:
        rows, workers = state.rows_per_s, state.workers + 1
    new = replace(state, level=_level_for(rows, cfg), workers=workers, rows_per_s=rows,
                  ample_since_s=ample_since, last_grow_s=now)
    return new, Directive(new.level, workers, rows, Reason.GROW, slack)


def _level_for(rows_per_s: float, cfg: LawConfig) -> Level:
    return Level.RUN if rows_per_s >= cfg.max_rows_per_s else Level.THROTTLE


# ---- impact_max_ratio: serving's latency with the job against without it ---------------------------

def _observe(state: LawState, sample: Sample, cfg: LawConfig, now: float) -> LawState:
    """Keep the requests that finished since the last reading (a histogram's new counts) as serving
    *without* the job (paused) or *with* it (running), once the last change has settled: a request
    that finished just after it may have run before it, and Ray's metrics refresh lags ~1 s."""
    if sample.error is not None:
        return state
    if sample.rps is not None:
        # A reading repeated between reads (no new counts, the same load) is not a second reading.
        repeated = sample.counts is None and bool(state.loads) and state.loads[-1][1:] == (sample.rps, sample.utilization)
        recent = tuple(r for r in state.loads if r[0] > now - LOAD_SMOOTH_S) or state.loads[-1:]  # read calmly: the last
        state = replace(state, loads=recent + (() if repeated else ((now, sample.rps, sample.utilization),)))
    if cfg.impact_max_ratio is None or not sample.counts:
        return state
    if state.changed_at_s is not None and now - state.changed_at_s < cfg.impact_settle_s:
        return state
    utils = [r[2] for r in state.loads if r[2] is not None]
    entry = (now, sample.counts, load_now(state), statistics.median(utils) if utils else None)
    if state.level is Level.PAUSE:
        keep = [r for r in state.reference if r[0] >= now - 3 * cfg.impact_every_s][-511:]
        return replace(state, reference=tuple(keep) + (entry,))
    keep = [r for r in state.running if r[0] >= now - cfg.impact_window_s][-511:]
    return replace(state, running=tuple(keep) + (entry,))


def _carry_impact(before: LawState, after: LawState, cfg: LawConfig, now: float) -> LawState:
    """The stages build new states; the impact memory carries over. A pause, a resume or a new rate or
    worker count is a change: requests settle again, and the running ones start over."""
    if cfg.impact_max_ratio is None:
        return replace(after, loads=before.loads)
    changed = (before.level is Level.PAUSE) != (after.level is Level.PAUSE) or (
        after.level is not Level.PAUSE and (before.rows_per_s, before.workers) != (after.rows_per_s, after.workers))
    return replace(after, reference=before.reference, loads=before.loads, running=() if changed else before.running,
                   changed_at_s=now if changed else before.changed_at_s)


def _carry_steady(before: LawState, after: LawState, now: float) -> LawState:
    moved = (before.level, before.rows_per_s, before.workers) != (after.level, after.rows_per_s, after.workers)
    return replace(after, steady_since_s=now if moved or before.steady_since_s is None else before.steady_since_s)


CALM_LOAD = 0.9  # read_every_s: the load at most this fraction of its ceiling


def read_every_s(state: LawState, directive: Directive, sample: Sample, cfg: LawConfig) -> float:
    """How long the next fresh reading of the serving side may wait after this decision (``state`` and
    ``directive``, from ``sample``): ``cfg.calm_read_s`` while nothing moves, else 0 (every refresh).

    Nothing moves when the directive has stood for ``calm_read_s``, the reading is good, every
    bound is far (latency and queue slack at least ``grow_above_slack``, the slack the law grows on;
    the load a tenth below its ceiling) and the job is not measuring its impact; and whenever a pause
    has stood that long, however near the bounds: the job is out, so a read can only bring its resume
    sooner. A read is not free: Ray's metrics agent renders a node's whole endpoint (~0.6 MB) for each
    one, ~40-70 ms of CPU on the serving host at serving's own priority, 4-7 % of a core at one a
    second; in a full benchmark run the governor read every second through a peak it had paused for,
    beside a service that needed more than one of the host's two cores (client p99 there 4.4x `none`'s).
    Slowed, a change is seen up to ``calm_read_s`` later.

    >>> cfg = LawConfig(slo_p99_ms=100.0)
    >>> calm = LawState(level=Level.RUN, workers=1, rows_per_s=500.0, steady_since_s=0.0)
    >>> read_every_s(calm, Directive(Level.RUN, 1, 500.0, Reason.AT_MAX), Sample(10.0, p99_ms=30.0), cfg)
    3.0
    >>> read_every_s(calm, Directive(Level.RUN, 1, 500.0, Reason.AT_MAX), Sample(10.0, p99_ms=75.0), cfg)
    0.0
    >>> out = LawState(level=Level.PAUSE, steady_since_s=0.0)  # paused for the load ceiling, at the peak
    >>> read_every_s(out, Directive(Level.PAUSE, 0, 0.0, Reason.LOAD_CEILING), Sample(10.0, p99_ms=75.0, utilization=0.9), cfg)
    3.0
    """
    now = sample.time_s
    if (cfg.calm_read_s <= 0 or sample.error is not None or directive.reason is Reason.MEASURING
            or state.measuring_rows_per_s is not None or state.steady_since_s is None
            or now - state.steady_since_s < cfg.calm_read_s):
        return 0.0
    if directive.level is Level.PAUSE:
        return cfg.calm_read_s
    room = [s for s in (slack_of(sample, cfg), queue_slack(sample, cfg)) if s is not None]
    if not room or min(room) < cfg.grow_above_slack:
        return 0.0
    if sample.utilization is not None and not sample.utilization <= CALM_LOAD * cfg.ceiling(state, now):
        return 0.0
    return cfg.calm_read_s


LOAD_SMOOTH_S = 5.0  # one reading's rate moves +-50 % with Ray's ~1-s refresh: the load is a median of seconds


def load_now(state: LawState) -> float | None:
    """The serving load (req/s) of the last seconds' readings, for comparing like with like."""
    return statistics.median(r[1] for r in state.loads) if state.loads else None


def resume_utilization(state: LawState, sample: Sample) -> float | None:
    """The utilization a resume is judged by: the higher of this reading's and the median of the last
    ``LOAD_SMOOTH_S``'s. One reading's rate moves +-50 % with Ray's ~1-s refresh, so on a climb to
    the peak a single low one fell inside the resume band: in a full benchmark run readings of 121,
    111 and 100 req/s against a ceiling of 115 brought the job back, and the next, 157, paused it
    again 0.3 s later, a resume and a pause (a checkpoint) at the peak's edge.

    >>> st = LawState(loads=((50.0, 121.0, 0.53), (51.0, 111.0, 0.48), (52.0, 100.0, 0.43)))
    >>> resume_utilization(st, Sample(time_s=52.0, p99_ms=30.0, rps=100.0, utilization=0.43))
    0.48
    """
    smooth = load_utilization(state, sample)
    return None if smooth is None else max(sample.utilization, smooth)


def load_utilization(state: LawState, sample: Sample) -> float | None:
    """The utilization a shrink is judged by: the median of the last ``LOAD_SMOOTH_S``'s readings
    (this one included), not one reading that Ray's refresh moves +-50 %.

    >>> st = LawState(loads=((50.0, 80.0, 0.40), (51.0, 120.0, 0.60), (52.0, 82.0, 0.41)))
    >>> load_utilization(st, Sample(time_s=52.0, p99_ms=30.0, rps=82.0, utilization=0.41))
    0.41
    """
    if sample.utilization is None:
        return None
    utils = [r[2] for r in state.loads if r[2] is not None and r[0] > sample.time_s - LOAD_SMOOTH_S]
    return statistics.median(utils) if utils else sample.utilization


LOAD_RECENT_S = 2.0  # about the last two of Ray's ~1-s refreshes


def load_risen(state: LawState, now: float) -> float | None:
    """The load to judge a rise by: the higher of :func:`load_now` and the median of the last
    ``LOAD_RECENT_S``'s readings. On a climb the 5-s median lags by seconds: in a quick benchmark run a
    measure that began at 61 req/s (the median) ended with readings of 84 and 101 req/s, while the
    5-s median read 57, inside the band, and the job came back at its full rate into the peak.

    >>> st = LawState(loads=((30.0, 48.0, None), (31.0, 47.0, None), (32.0, 57.0, None), (33.0, 84.0, None),
    ...                      (34.0, 101.0, None)))
    >>> load_now(st), load_risen(st, now=34.0)  # the readings of 32-34 s: 57, 84, 101
    (57.0, 84.0)
    """
    smooth = load_now(state)
    recent = [r[1] for r in state.loads if r[0] >= now - LOAD_RECENT_S]
    if not recent:
        return smooth
    return max(smooth, statistics.median(recent))


def _near(rps: float | None, load: float | None, cfg: LawConfig) -> bool:
    """Requests counted at ``rps`` came at about the load ``load`` (a tail depends on load as much as on
    the job beside it: a reference from a quieter hour would count the load's rise as the job's)."""
    if rps is None or load is None:
        return True
    return abs(rps - load) <= max(cfg.impact_load_band * load, 2.0)


def _reference_at(state: LawState, cfg: LawConfig, now: float, load: float | None, within_s: float) -> list:
    return [r for r in state.reference if r[0] >= now - within_s and _near(r[2], load, cfg)]


def _pooled(entries) -> tuple[list[tuple[float, float]] | None, float]:
    """The entries' counts summed by bucket (one histogram of all their requests), and how many requests."""
    buckets = sum_buckets([entry[1] for entry in entries])
    return buckets, buckets[-1][1] if buckets else 0.0


def _reference_due(state: LawState, cfg: LawConfig, now: float, load: float | None) -> bool:
    """Serving without the job was not measured in the last ``impact_every_s``, or the load has risen
    out of the band of every load measured in the last three of them, above the latest measure's. A
    fall from the latest measure calls for no measure of its own (the next periodic one judges the new
    load): a job's effect on serving's tail grows with the load, and a measure at a lower load settles
    fewer requests (in the benchmark's runs one at ~18 req/s took 8 s of a 60-s day for ~90 requests,
    fewer than a judgement needs). The latest, not any higher one: in a ``make demo`` run a pause
    for the ceiling in the first second (a burst at 77 req/s) would otherwise have stood for every
    load up to it, and the job ran its climb from 21 to 45 req/s unmeasured.

    >>> cfg = LawConfig(slo_p99_ms=100, impact_max_ratio=1.1)
    >>> st = LawState(reference=((100.0, ((10.0, 300.0),), 40.0, 0.4),))
    >>> [_reference_due(st, cfg, now=110.0, load=x) for x in (40.0, 20.0, 80.0)]  # here; fallen; risen
    [False, False, True]
    >>> burst = LawState(reference=((90.0, ((10.0, 30.0),), 77.0, 0.8),) +
    ...                  ((100.0, ((10.0, 300.0),), 16.0, 0.16),))
    >>> _reference_due(burst, cfg, now=110.0, load=40.0)  # risen from the latest measure, below the burst's
    True
    """
    if not state.reference or state.reference[-1][0] < now - cfg.impact_every_s:
        return True
    if _reference_at(state, cfg, now, load, 3 * cfg.impact_every_s):
        return False
    latest = state.reference[-1][2]
    return load is None or latest is None or load > latest


def reference_ready(state: LawState, cfg: LawConfig, now: float, load: float | None = None) -> bool:
    """Serving without the job was measured at this load recently (``impact_min_requests`` requests in
    the last ``impact_every_s``), or this pause has measured for as long as it may (``impact_pause_s``:
    a quiet service is not waited on)."""
    fresh = _reference_at(state, cfg, now, load, cfg.impact_every_s)
    if _pooled(fresh)[1] >= cfg.impact_min_requests:
        return True
    if state.paused_at_s is not None:
        return now - state.paused_at_s >= cfg.impact_pause_s
    return bool(fresh) and fresh[-1][0] - fresh[0][0] >= cfg.impact_pause_s - cfg.impact_settle_s  # never ran yet


def _impact_pending(state: LawState, cfg: LawConfig, now: float) -> bool:
    """The current rate's impact is still being measured: fewer than ``impact_min_requests`` settled
    requests at it, and less than ``impact_window_s`` of readings (a quiet service is not waited on)."""
    running, _ = _running_now(state, cfg, now)
    span = running[-1][0] - running[0][0] if running else 0.0
    return _pooled(running)[1] < cfg.impact_min_requests and span < cfg.impact_window_s


def reference_in_hand(state: LawState, cfg: LawConfig, now: float) -> bool:
    """Serving without the job is pooled at the load now (:func:`load_now`) to ``impact_min_requests``:
    a judgement of the current rate needs only the requests beside the job. Growth waits for that
    judgement only then; with too few requests without the job (a quiet hour: a measuring pause
    collects what ``impact_pause_s`` allows, and the next one is due at this load only after
    ``impact_every_s``) it would wait ``impact_window_s`` for none, and grows on the SLO alone. In a
    full benchmark run (measures at 15-24 req/s: 30-80 settled requests each) the job sat at half
    its budget for 8-20 s at a time, waiting for judgements that never came.

    >>> cfg = LawConfig(slo_p99_ms=100, impact_max_ratio=1.1)  # 200 requests a side
    >>> few = ((0.0, ((10.0, 40.0), (math.inf, 80.0)), 20.0, None),)  # 80 requests at 20 req/s
    >>> st = LawState(level=Level.THROTTLE, reference=few, loads=((1.0, 20.0, 0.2),))
    >>> reference_in_hand(st, cfg, now=1.0), reference_in_hand(replace(st, reference=few * 3), cfg, now=1.0)
    (False, True)
    """
    return _pooled(_reference_at(state, cfg, now, load_now(state), 3 * cfg.impact_every_s))[1] >= cfg.impact_min_requests


def _running_now(state: LawState, cfg: LawConfig, now: float) -> tuple[list, float | None]:
    """The readings at the current rate of the last ``impact_window_s`` that came at about the load now
    (the median of the last seconds; without it, of the window's), and that load. A window that spans
    a rise would otherwise weigh its tail with its busiest seconds and call the load's rise the job's
    (the benchmark's run L judged 1.72x across a rise from 58 to 107 req/s)."""
    running = [r for r in state.running if r[0] >= now - cfg.impact_window_s]
    load = load_now(state)
    if load is None:
        loads = [r[2] for r in running if r[2] is not None]
        load = statistics.median(loads) if loads else None
    return [r for r in running if _near(r[2], load, cfg)], load


@dataclass(frozen=True)
class Impact:
    """The job's measured impact: ``ratio`` (the quantile with the job over the same quantile without
    it) and ``low``, the ratio's lower confidence bound (``impact_confidence``)."""

    ratio: float
    low: float


def impact_estimate(state: LawState, cfg: LawConfig, now: float) -> Impact | None:
    """The ``impact_quantile`` of the settled requests at the current rate (the last ``impact_window_s``,
    those at about the load now) over the same quantile of recent requests without the job at that
    load; ``None`` while either side has fewer than ``impact_min_requests``. Requests are pooled into
    one histogram per side (a quantile of hundreds of requests, not a median of noisy window
    quantiles); where the readings
    carry utilization ``u``, the reference is first moved to the load now as a queue's tail moves, by
    ``(1 - u_then) / (1 - u_now)`` (an M/M/1 queue's quantiles scale as ``1 / (1 - u)``).

    The lower bound takes each side's sampling error: of ``n`` requests, the ``q`` quantile's rank is
    uncertain by ``sqrt(q (1 - q) / n)``, so the rank bound is the quantile ``z`` of those below ``q``
    with the job over the one ``z`` above it without (``z`` the normal quantile of
    ``impact_confidence``). Of 200 requests a side, a p90 is uncertain by +-2 percentage points of
    rank: on an exponential tail, an impact of 1.1 is not yet told from 1.0. Requests are not
    independent draws, though: they come in bursts, and the host moves between the two sides' seconds.
    ``impact_noise`` (the log-ratio's spread between windows of one condition) widens the bound in
    quadrature: ``low = ratio * exp(-sqrt(log(ratio / rank_low) ** 2 + (z * noise) ** 2))``; at 0.12
    and 0.8 confidence, an impact must be above ~1.22x (``1.1 * exp(z * noise)``) to be surely above
    1.1x, however many requests.

    >>> cfg = LawConfig(slo_p99_ms=100, impact_max_ratio=1.1, impact_quantile=0.5, impact_min_requests=100,
    ...                 impact_noise=0.0)
    >>> ref = [(0, ((10.0, 40.0), (20.0, 100.0), (math.inf, 100.0)), 50, None),   # half under 10 ms
    ...        (1, ((10.0, 0.0), (20.0, 0.0), (math.inf, 100.0)), 200, None)]     # another load: not compared
    >>> run = [(5, ((10.0, 10.0), (20.0, 100.0), (math.inf, 100.0)), 50, None)]
    >>> st = LawState(level=Level.RUN, reference=tuple(ref), running=tuple(run))
    >>> est = impact_estimate(st, cfg, now=5)  # median 14.4 ms with the job, 11.7 ms without
    >>> round(est.ratio, 2), round(est.low, 2)  # of 100 requests a side, still surely above 1.1
    (1.24, 1.13)
    >>> round(impact_estimate(st, replace(cfg, impact_noise=0.12), now=5).low, 2)  # windows apart by 12 %: not sure
    1.08
    """
    running, load = _running_now(state, cfg, now)
    with_job, n_with = _pooled(running)
    if n_with < cfg.impact_min_requests:
        return None
    reference = _reference_at(state, cfg, now, load, 3 * cfg.impact_every_s)
    without, n_without = _pooled(reference)
    if n_without < cfg.impact_min_requests:
        return None
    q = cfg.impact_quantile
    z = statistics.NormalDist().inv_cdf(cfg.impact_confidence)
    q_with, q_without = quantile_from_buckets(with_job, q), quantile_from_buckets(without, q)
    q_with_low = quantile_from_buckets(with_job, max(0.0, q - z * math.sqrt(q * (1 - q) / n_with)))
    q_without_high = quantile_from_buckets(without, min(1.0, q + z * math.sqrt(q * (1 - q) / n_without)))
    if not q_with or not q_without or not q_without_high:
        return None
    utils_now = [r[3] for r in running if r[3] is not None]
    utils_then = [r[3] for r in reference if r[3] is not None]
    scale = 1.0
    if utils_now and utils_then:
        scale = (1 - min(statistics.median(utils_then), 0.95)) / (1 - min(statistics.median(utils_now), 0.95))
    ratio, rank_low = q_with / (q_without * scale), (q_with_low or 0.0) / (q_without_high * scale)
    if rank_low <= 0.0:
        return Impact(ratio=ratio, low=0.0)
    spread = math.hypot(math.log(ratio / rank_low) if rank_low < ratio else 0.0, z * cfg.impact_noise)
    return Impact(ratio=ratio, low=ratio * math.exp(-spread))


def impact_ratio(state: LawState, cfg: LawConfig, now: float) -> float | None:
    """:func:`impact_estimate`'s ratio alone (``None`` while not measured)."""
    est = impact_estimate(state, cfg, now)
    return None if est is None else est.ratio
