"""Maintenance-window placement: pure functions from a forecast, jobs and constraints to a plan.

Each job expands into *runs* (one per cadence period, or one run for a one-off job); each run gets
every feasible start on the forecast's slot grid (inside its period, after its data refresh, before
its deadline, under the headroom threshold, clear of blackouts) with a cost: ``workers`` times the
sum over its slots of (forecast load / mean forecast load + ``price_weight`` * price / mean price)
* slot hours -- interference and money both grow with the workers a window holds. The runs are
then placed together, not one by one:
see :mod:`runtime.windows.portfolio` (relaxation, components, an exact 0-1 program for conflicting ones).
A run that cannot be placed is reported with a :class:`Reason`, never silently dropped.

>>> f = forecast_load(profile, start_epoch_s, 7 * 86_400.0)                        # doctest: +SKIP
>>> job = JobRequest("ranker", duration_s=3 * 3600, validation_s=1800, workers=2, cadence_days=1,
...                  data_refresh_s_of_day=2 * 3600)                               # doctest: +SKIP
>>> plan = plan_windows(f, [job], PlanConstraints(pool_workers=4, max_load_rps=0.8))  # doctest: +SKIP
>>> [(w.job, w.start_epoch_s) for w in plan.windows]                               # doctest: +SKIP
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal, Sequence

import numpy as np

from runtime.errors import SpecError
from runtime.windows.portfolio import Candidates, solve_portfolio
from runtime.windows.profile import Forecast, local_calendar, zone


class Reason(str, enum.Enum):
    """Why a run has no window (named constants, exported in the plan)."""

    BEYOND_HORIZON = "beyond_horizon"  # its period runs past the horizon and the part inside is too short
    WINDOW_TOO_SHORT = "window_too_short"  # release/refresh .. deadline/period end shorter than the job
    NO_FORECAST = "no_forecast"  # history never covered these times of week: unknown is not headroom
    OVER_THRESHOLD = "over_threshold"  # every start has some slot over max_load_rps
    BLACKOUT = "blackout"  # every start left overlaps a declared blackout
    EXCEEDS_POOL = "exceeds_pool"  # the job asks for more workers than the pool has
    POOL_FULL = "pool_full"  # feasible alone, but the other runs take the pool at every start


@dataclass(frozen=True)
class JobRequest:
    """One retraining job. Durations in seconds; ``data_refresh_s_of_day`` is local seconds after midnight.

    With ``cadence_days`` the job runs once per period of that many local days, each period starting at
    the data-refresh time (or local midnight), and must finish inside its period. Without, it runs once.
    """

    name: str
    duration_s: float
    validation_s: float = 0.0
    workers: int = 1
    cadence_days: int | None = None
    data_refresh_s_of_day: float | None = None
    not_before_epoch_s: float | None = None
    deadline_epoch_s: float | None = None

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.validation_s < 0:
            raise SpecError(f"job {self.name!r}: duration_s must be > 0 and validation_s >= 0", where=self.name)
        if self.workers < 1:
            raise SpecError(f"job {self.name!r}: workers must be >= 1", where=self.name)
        if self.cadence_days is not None and self.cadence_days < 1:
            raise SpecError(f"job {self.name!r}: cadence_days must be >= 1", where=self.name)
        if self.data_refresh_s_of_day is not None and not 0 <= self.data_refresh_s_of_day < 86_400:
            raise SpecError(f"job {self.name!r}: data refresh must be a time of day", where=self.name)

    @property
    def total_s(self) -> float:
        return self.duration_s + self.validation_s


@dataclass(frozen=True)
class Blackout:
    name: str
    start_epoch_s: float
    end_epoch_s: float


@dataclass(frozen=True)
class PriceSchedule:
    """Price per worker-hour by local hour of day (24 values), optionally different on weekends."""

    hourly_price: tuple[float, ...]
    weekend_hourly_price: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for prices in (self.hourly_price, self.weekend_hourly_price):
            if prices is not None and (len(prices) != 24 or min(prices) < 0):
                raise SpecError("a price schedule needs 24 prices >= 0, one per local hour", where="prices")

    def at(self, weekday: np.ndarray, hour: np.ndarray) -> np.ndarray:
        weekday_prices = np.asarray(self.hourly_price, dtype=np.float64)
        weekend_prices = np.asarray(self.weekend_hourly_price or self.hourly_price, dtype=np.float64)
        return np.where(weekday >= 5, weekend_prices[hour], weekday_prices[hour])


@dataclass(frozen=True)
class PlanConstraints:
    """Shared by every job. ``price_weight`` scales the price term against the load term (both mean-normalised)."""

    pool_workers: int
    max_load_rps: float | None = None
    blackouts: tuple[Blackout, ...] = ()
    prices: PriceSchedule | None = None
    price_weight: float = 1.0


@dataclass(frozen=True)
class Run:
    """One execution a job owes: it must start at or after ``release`` and end by ``due``."""

    job: str
    index: int
    release_epoch_s: float
    due_epoch_s: float


@dataclass(frozen=True)
class Window:
    job: str
    run: int
    start_epoch_s: float
    end_epoch_s: float
    workers: int
    mean_load_rps: float
    peak_load_rps: float
    mean_price: float | None
    cost: float


@dataclass(frozen=True)
class Unplaced:
    job: str
    run: int
    release_epoch_s: float
    due_epoch_s: float
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Plan:
    tz_name: str
    horizon_start_epoch_s: float
    horizon_end_epoch_s: float
    windows: tuple[Window, ...]
    unplaced: tuple[Unplaced, ...]
    total_cost: float
    proven_optimal: bool
    method: str  # how the portfolio was solved: "relaxation", "milp" or "greedy"
    notes: tuple[str, ...] = ()


def estimate_duration_s(past_durations_s: Sequence[float], quantile: float = 0.8) -> float:
    """A conservative duration estimate from past runs (e.g. MLflow): a high quantile, not the mean.

    >>> round(estimate_duration_s([3000, 3100, 3300, 2900, 9000]), 3)
    4440.0
    """
    values = np.asarray([d for d in past_durations_s if d and d > 0], dtype=np.float64)
    if values.size == 0:
        raise SpecError("no past run durations to estimate from", fix="give duration_minutes in the job spec")
    return float(np.quantile(values, quantile))


def expand_runs(job: JobRequest, forecast: Forecast) -> list[Run]:
    """The runs ``job`` owes inside the forecast's horizon: one per cadence period starting in it, else one."""
    tz = zone(forecast.tz_name)
    horizon_start, horizon_end = float(forecast.start_epoch_s[0]), forecast.end_epoch_s
    release_floor = max(horizon_start, job.not_before_epoch_s if job.not_before_epoch_s is not None else -math.inf)
    due_cap = job.deadline_epoch_s if job.deadline_epoch_s is not None else math.inf
    refresh = time(0) if job.data_refresh_s_of_day is None else (
        datetime.min + timedelta(seconds=job.data_refresh_s_of_day)).time()

    def anchor_at(day_offset: int, from_epoch_s: float = horizon_start) -> float:
        # Local wall-clock arithmetic (date + time in the zone), so a "day" is 23 or 25 h across DST.
        day = datetime.fromtimestamp(from_epoch_s, tz).date() + timedelta(days=day_offset)
        return datetime.combine(day, refresh, tzinfo=tz).timestamp()

    if job.cadence_days is None:
        release = release_floor
        if job.data_refresh_s_of_day is not None:  # wait for the first refresh at or after the release
            release = next(a for k in range(-1, 3) if (a := anchor_at(k, release_floor)) >= release_floor)
        return [Run(job.name, 0, release, due_cap)]
    runs: list[Run] = []
    offset = 0
    while anchor_at(offset) < horizon_start:
        offset += 1
    while (start := anchor_at(offset)) < horizon_end and start < due_cap:
        end = anchor_at(offset + job.cadence_days)
        runs.append(Run(job.name, len(runs), max(start, release_floor), min(end, due_cap)))
        offset += job.cadence_days
    return runs


def slot_costs(forecast: Forecast, constraints: PlanConstraints) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-slot cost (load, plus weighted price, each normalised by its horizon mean) and per-slot price."""
    load = forecast.load_rps
    known = np.isfinite(load)
    mean_load = float(load[known].mean()) if known.any() else 1.0
    cost = np.where(known, load, 0.0) / (mean_load if mean_load > 0 else 1.0)
    price = None
    if constraints.prices is not None:
        _, weekday, sec = local_calendar(forecast.start_epoch_s, forecast.tz_name)
        price = constraints.prices.at(weekday, (sec // 3600).astype(np.int64))
        mean_price = float(price.mean())
        if mean_price > 0:
            cost = cost + constraints.price_weight * price / mean_price
    return cost * forecast.slot_s / 3600.0, price


def _window_max(values: np.ndarray, n: int) -> np.ndarray:
    """max(values[i:i+n]) for each i with a full window."""
    if n > len(values):
        return np.empty(0)
    return np.lib.stride_tricks.sliding_window_view(values, n).max(axis=1)


def _options_for(run: Run, job: JobRequest, forecast: Forecast, constraints: PlanConstraints,
                 slot_cost: np.ndarray, blocked: np.ndarray) -> Candidates | Unplaced:
    """Filter the run's starts constraint by constraint; the filter that empties the set names the reason."""
    n_slots = int(math.ceil(job.total_s / forecast.slot_s - 1e-9))
    starts = forecast.start_epoch_s
    n_total = len(starts)

    def unplaced(reason: Reason, detail: str) -> Unplaced:
        return Unplaced(run.job, run.index, run.release_epoch_s, run.due_epoch_s, reason, detail)

    if job.workers > constraints.pool_workers:
        return unplaced(Reason.EXCEEDS_POOL, f"needs {job.workers} workers, pool has {constraints.pool_workers}")
    idx = np.arange(max(n_total - n_slots + 1, 0))
    ok = (starts[idx] >= run.release_epoch_s - 1e-6) & (starts[idx] + job.total_s <= run.due_epoch_s + 1e-6)
    if not ok.any():
        reason = Reason.BEYOND_HORIZON if run.due_epoch_s > forecast.end_epoch_s else Reason.WINDOW_TOO_SHORT
        return unplaced(reason, f"{job.total_s / 3600:.2f} h does not fit between release and due inside the horizon")
    peak = _window_max(np.nan_to_num(forecast.load_rps, nan=np.inf), n_slots)
    ok &= np.isfinite(peak)
    if not ok.any():
        return unplaced(Reason.NO_FORECAST, "no history covers these times of week")
    if constraints.max_load_rps is not None:
        ok &= peak <= constraints.max_load_rps
        if not ok.any():
            return unplaced(Reason.OVER_THRESHOLD, f"forecast load exceeds {constraints.max_load_rps} rps at every start")
    ok &= _window_max(blocked.astype(np.int8), n_slots) == 0
    if not ok.any():
        return unplaced(Reason.BLACKOUT, "every remaining start overlaps a blackout")
    cum = np.concatenate([[0.0], np.cumsum(slot_cost)])
    chosen = idx[ok]
    costs = job.workers * (cum[chosen + n_slots] - cum[chosen])
    order = np.lexsort((chosen, costs))  # cheapest first, earliest start on ties: deterministic
    return Candidates(job.workers, n_slots, chosen[order], costs[order])


def plan_windows(forecast: Forecast, jobs: Sequence[JobRequest], constraints: PlanConstraints, *,
                 strategy: Literal["optimal", "greedy"] = "optimal", time_limit_s: float = 30.0) -> Plan:
    """Place every run of every job together (see :mod:`runtime.windows.portfolio`); same inputs, same plan.

    >>> plan = plan_windows(forecast, jobs, PlanConstraints(pool_workers=4, max_load_rps=0.8))  # doctest: +SKIP
    >>> [(w.job, w.start_epoch_s) for w in plan.windows], plan.unplaced                         # doctest: +SKIP
    """
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise SpecError(f"job names must be unique, got {names}", where="jobs", fix="rename the duplicates")
    if constraints.pool_workers < 1:
        raise SpecError("pool_workers must be >= 1", where="pool_workers", fix="give the training pool's worker count")
    if len(forecast.start_epoch_s) == 0:
        raise SpecError("the forecast holds no slot", where="horizon", fix="plan over at least a day")
    slot_cost, price = slot_costs(forecast, constraints)
    slot_end = forecast.start_epoch_s + forecast.slot_s
    blocked = np.zeros(len(slot_cost), dtype=bool)
    for b in constraints.blackouts:
        blocked |= (forecast.start_epoch_s < b.end_epoch_s) & (slot_end > b.start_epoch_s)
    placeable: list[tuple[Run, JobRequest, Candidates]] = []
    unplaced: list[Unplaced] = []
    for job in jobs:
        for run in expand_runs(job, forecast):
            found = _options_for(run, job, forecast, constraints, slot_cost, blocked)
            if isinstance(found, Unplaced):
                unplaced.append(found)
            else:
                placeable.append((run, job, found))
    solution = solve_portfolio([c for _, _, c in placeable], constraints.pool_workers,
                               strategy=strategy, time_limit_s=time_limit_s)
    windows: list[Window] = []
    for (run, job, cands), s in zip(placeable, solution.starts):
        if s is None:
            unplaced.append(Unplaced(run.job, run.index, run.release_epoch_s, run.due_epoch_s, Reason.POOL_FULL,
                                     f"the pool's {constraints.pool_workers} workers are taken at every feasible start"))
            continue
        span = slice(s, s + cands.n_slots)
        start = float(forecast.start_epoch_s[s])
        cost = float(cands.costs[int(np.flatnonzero(cands.starts == s)[0])])
        windows.append(Window(run.job, run.index, start, start + job.total_s, job.workers,
                              float(forecast.load_rps[span].mean()), float(forecast.load_rps[span].max()),
                              None if price is None else float(price[span].mean()), cost))
    windows.sort(key=lambda w: (w.start_epoch_s, w.job, w.run))
    unplaced.sort(key=lambda u: (u.release_epoch_s, u.job, u.run))
    notes = (solution.note,) if solution.note else ()
    return Plan(forecast.tz_name, float(forecast.start_epoch_s[0]), forecast.end_epoch_s, tuple(windows),
                tuple(unplaced), float(sum(w.cost for w in windows)), solution.proven_optimal, solution.method, notes)


def pool_usage(plan: Plan, forecast: Forecast) -> np.ndarray:
    """Workers in use per forecast slot under ``plan`` (for checks and plots)."""
    starts, ends = forecast.start_epoch_s, forecast.start_epoch_s + forecast.slot_s
    usage = np.zeros(len(starts), dtype=np.int64)
    for w in plan.windows:
        usage[(starts < w.end_epoch_s) & (ends > w.start_epoch_s)] += w.workers
    return usage
