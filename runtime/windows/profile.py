"""Weekly traffic profile and forecast: pure functions of a :class:`History`, a time zone and a config.

The profile is a table ``load_rps[weekday, slot]`` over the local week (Monday = 0), one value per
time-of-day slot (15 minutes by default). Each value is a *robust high quantile* of the per-slot mean
load seen on past days of the same kind (weekdays pool with weekdays, weekend days with weekend days),
so with three weeks of history a weekday slot rests on ~15 days, not 3:

* an outage (a day or a week of near-zero traffic) is dropped as a low outlier: missing data, not
  a quiet period to plan into;
* a launch day (a spike) is clipped to ``median + outlier_z * MAD`` before the quantile is taken, so
  one extreme day cannot drag a slot's forecast up;
* slots are keyed by the *local* wall clock of the configured zone (zoneinfo), so 03:00 stays 03:00
  across a DST change; on the fall-back day both 01:xx hours feed the same slots, on the
  spring-forward day the missing hour just contributes nothing.

>>> from runtime.windows.history import read_history_csv
>>> h = read_history_csv("data/nasa-http-1995-07.csv")                         # doctest: +SKIP
>>> p = fit_weekly_profile(h, "America/New_York")                               # doctest: +SKIP
>>> f = forecast_load(p, start_epoch_s=806_385_600.0, horizon_s=7 * 86_400.0)   # doctest: +SKIP
>>> f.load_rps.shape                                                            # doctest: +SKIP
(672,)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from runtime.errors import DataError, SpecError
from runtime.windows.history import History

DAY_S = 86_400.0
WEEKDAYS_WEEKEND: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6))


@dataclass(frozen=True)
class ProfileConfig:
    """How the profile is fitted.

    ``day_groups`` partitions the weekdays (Monday = 0) into kinds whose days are pooled; pass seven
    singletons for a pure time-of-week profile when there are many weeks of history.
    """

    slot_s: float = 900.0
    quantile: float = 0.9
    day_groups: tuple[tuple[int, ...], ...] = WEEKDAYS_WEEKEND
    smooth_slots: int = 1  # also pool the +-N neighbouring slots of the same day: steadier quantiles
    min_coverage: float = 0.5  # a (day, slot) cell needs this fraction of its expected rows to count
    outlier_z: float = 3.0  # robust z-score (MAD units) beyond which a day's slot value is an outlier

    def __post_init__(self) -> None:
        if not (60.0 <= self.slot_s <= 3_600.0) or (DAY_S % self.slot_s):
            raise SpecError(f"slot_s={self.slot_s} must divide a day and lie in 60..3600 s", fix="use 900 (15 min)")
        if not 0.0 < self.quantile <= 1.0:
            raise SpecError(f"quantile={self.quantile} must be in (0, 1]", fix="use 0.9")
        days = sorted(d for group in self.day_groups for d in group)
        if days != list(range(7)):
            raise SpecError(f"day_groups={self.day_groups} must cover each weekday 0..6 exactly once",
                            fix="use ((0, 1, 2, 3, 4), (5, 6))")

    @property
    def slots_per_day(self) -> int:
        return int(DAY_S // self.slot_s)


@dataclass(frozen=True)
class WeeklyProfile:
    """``load_rps[weekday, slot]`` (NaN where history never covered it) and the days behind each value."""

    tz_name: str
    config: ProfileConfig
    load_rps: np.ndarray  # (7, slots_per_day) float64
    days_used: np.ndarray  # (7, slots_per_day) int: pooled (day, slot) cells behind each value
    weeks_seen: int
    source: str = ""

    @property
    def slot_s(self) -> float:
        return self.config.slot_s


@dataclass(frozen=True)
class Forecast:
    """Load per slot over a horizon: slot ``i`` covers ``[start_epoch_s[i], start_epoch_s[i] + slot_s)``."""

    tz_name: str
    slot_s: float
    start_epoch_s: np.ndarray  # (n,) float64, evenly spaced by slot_s in absolute time
    load_rps: np.ndarray  # (n,) float64, NaN = unknown
    source: str = field(default="profile")

    @property
    def end_epoch_s(self) -> float:
        return float(self.start_epoch_s[-1] + self.slot_s) if len(self.start_epoch_s) else 0.0


def zone(tz_name: str) -> ZoneInfo:
    """The :class:`ZoneInfo` for ``tz_name``; a :class:`SpecError` that says how to fix a typo."""
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError(f"unknown time zone {tz_name!r}", where="timezone",
                        fix="use an IANA name such as 'America/New_York' or 'UTC'") from None


def utc_offsets_s(epoch_s: np.ndarray, tz_name: str) -> np.ndarray:
    """The zone's UTC offset at each instant (DST-aware); evaluated once per distinct minute."""
    tz = zone(tz_name)
    epoch_s = np.asarray(epoch_s, dtype=np.float64)
    minutes, inverse = np.unique(np.floor(epoch_s / 60.0), return_inverse=True)
    offsets = np.array([datetime.fromtimestamp(m * 60.0, tz).utcoffset().total_seconds() for m in minutes])
    return offsets[inverse].reshape(epoch_s.shape) if len(minutes) else np.zeros_like(epoch_s)


def local_calendar(epoch_s: np.ndarray, tz_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(day_number, weekday, seconds_of_day)`` of each instant on the zone's wall clock.

    ``day_number`` counts local days since 1970-01-01; weekday is Monday = 0 (1970-01-01 was a Thursday).
    """
    local_s = np.asarray(epoch_s, dtype=np.float64) + utc_offsets_s(epoch_s, tz_name)
    day = np.floor(local_s / DAY_S).astype(np.int64)
    return day, (day + 3) % 7, local_s - day * DAY_S


def clean_outliers(cells: np.ndarray, outlier_z: float, rel_floor: float = 0.05) -> np.ndarray:
    """Per column (one time-of-day slot across days): drop low outliers, clip high ones.

    A value below ``median - z * spread`` becomes NaN (an outage is missing data, not a quiet slot);
    one above ``median + z * spread`` is clipped to that bound (a launch day counts as a busy day, no
    more). ``spread`` is the MAD scaled to a standard deviation, floored at ``rel_floor * median`` so
    that a perfectly regular slot still recognises a zero as an outage. Robust while fewer than half
    the days in a column are anomalous.
    """
    cells = np.asarray(cells, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        median = np.nanmedian(cells, axis=0)
        spread = np.maximum(1.4826 * np.nanmedian(np.abs(cells - median), axis=0), rel_floor * np.abs(median))
    low, high = median - outlier_z * spread, median + outlier_z * spread
    with np.errstate(invalid="ignore"):
        return np.where(cells < low, np.nan, np.minimum(cells, high))


def robust_high_quantile(values: np.ndarray, quantile: float, outlier_z: float) -> float:
    """``quantile`` of ``values`` after :func:`clean_outliers` (NaN when nothing is left).

    >>> robust_high_quantile(np.array([10.0, 11, 12, 10, 11, 0, 500]), 0.9, 3.0) < 20
    True
    """
    cleaned = clean_outliers(np.asarray(values, dtype=np.float64).reshape(-1, 1), outlier_z)[:, 0]
    cleaned = cleaned[np.isfinite(cleaned)]
    return float(np.quantile(cleaned, quantile)) if cleaned.size else float("nan")


def _pooled_quantile(cells: np.ndarray, quantile: float, smooth_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slot: the quantile over every day's value in slots ``s - k .. s + k`` (same day kind), and the count."""
    n_days, n_slots = cells.shape
    shifted = [np.full((n_days, n_slots), np.nan) for _ in range(2 * smooth_slots + 1)]
    for i, k in enumerate(range(-smooth_slots, smooth_slots + 1)):
        # No wrap past midnight: the neighbour of 00:00 is the previous *day*, which is another row.
        src = slice(max(0, k), n_slots + min(0, k))
        dst = slice(max(0, -k), n_slots + min(0, -k))
        shifted[i][:, dst] = cells[:, src]
    pool = np.concatenate(shifted, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = np.nanquantile(pool, quantile, axis=0) if n_days else np.full(n_slots, np.nan)
    return value, np.isfinite(pool).sum(axis=0)


def _day_slot_means(history: History, tz_name: str, config: ProfileConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mean load (rps) per (local day, slot) cell with enough coverage, as a (days, slots) array + day numbers."""
    step_s = history.step_s
    rate_rps = history.requests / step_s
    day, _, sec = local_calendar(history.epoch_s, tz_name)
    slot = np.minimum((sec // config.slot_s).astype(np.int64), config.slots_per_day - 1)
    first_day = int(day.min())
    n_days = int(day.max()) - first_day + 1
    flat = (day - first_day) * config.slots_per_day + slot
    size = n_days * config.slots_per_day
    sums = np.bincount(flat, weights=rate_rps, minlength=size)
    counts = np.bincount(flat, minlength=size).astype(np.float64)
    expected = max(config.slot_s / step_s, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts >= config.min_coverage * expected, sums / counts, np.nan)
    return means.reshape(n_days, config.slots_per_day), np.arange(first_day, first_day + n_days)


def fit_weekly_profile(history: History, tz_name: str, config: ProfileConfig = ProfileConfig()) -> WeeklyProfile:
    """Fit the weekly profile of ``history`` on the wall clock of ``tz_name``.

    >>> p = fit_weekly_profile(history, "America/New_York", ProfileConfig(quantile=0.9))  # doctest: +SKIP
    >>> p.load_rps[0, 12]   # Monday 03:00-03:15 local, requests per second                # doctest: +SKIP
    """
    zone(tz_name)
    if len(history.epoch_s) == 0:
        raise DataError("history has no rows", where=history.source, fix="pass at least one week of traffic history")
    means, day_numbers = _day_slot_means(history, tz_name, config)
    weekdays = (day_numbers + 3) % 7
    slots = config.slots_per_day
    load = np.full((7, slots), np.nan)
    used = np.zeros((7, slots), dtype=np.int64)
    for group in config.day_groups:
        # Outliers are judged slot by slot across days *before* pooling neighbouring slots, so a
        # step in the profile (quiet 03:00, busy 02:45) is never mistaken for an anomaly.
        rows = clean_outliers(means[np.isin(weekdays, group)], config.outlier_z)
        value, count = _pooled_quantile(rows, config.quantile, config.smooth_slots)
        for weekday in group:
            load[weekday], used[weekday] = value, count
    weeks = np.unique((day_numbers[np.isfinite(means).any(axis=1)] + 3) // 7)
    load.setflags(write=False)
    used.setflags(write=False)
    return WeeklyProfile(tz_name, config, load, used, int(len(weeks)), history.source)


def align_up_to_slot(epoch_s: float, tz_name: str, slot_s: float) -> float:
    """The first local slot boundary (e.g. hh:00, hh:15) at or after ``epoch_s``."""
    offset_s = float(utc_offsets_s(np.array([epoch_s]), tz_name)[0])
    local_s = epoch_s + offset_s
    return float(np.ceil(local_s / slot_s - 1e-9) * slot_s - offset_s)


def horizon_end_epoch_s(start_epoch_s: float, days: float, tz_name: str) -> float:
    """``days`` after ``start`` on the local calendar: 7 days from local midnight end at local midnight,
    even across a DST change (a fraction of a day is added in absolute time)."""
    tz = zone(tz_name)
    whole = int(np.floor(days))
    local_start = datetime.fromtimestamp(start_epoch_s, tz)
    # Wall-clock arithmetic on an aware datetime keeps the clock time; timestamp() re-resolves the offset.
    end = (local_start.replace(tzinfo=None) + timedelta(days=whole)).replace(tzinfo=tz).timestamp()
    return end + (days - whole) * DAY_S


def horizon_slots(start_epoch_s: float, horizon_s: float, tz_name: str, slot_s: float) -> np.ndarray:
    """Slot starts covering ``[start, start + horizon)``, the first aligned up to a local slot boundary."""
    first = align_up_to_slot(start_epoch_s, tz_name, slot_s)
    n = int(np.floor((start_epoch_s + horizon_s - first) / slot_s + 1e-9))
    return first + slot_s * np.arange(max(n, 0), dtype=np.float64)


def forecast_load(profile: WeeklyProfile, start_epoch_s: float, horizon_s: float) -> Forecast:
    """The profile laid over ``[start, start + horizon)``, slot by slot on the local clock (DST-aware)."""
    starts = horizon_slots(start_epoch_s, horizon_s, profile.tz_name, profile.slot_s)
    if len(starts) == 0:
        raise SpecError(f"horizon of {horizon_s} s holds no {profile.slot_s:.0f}-s slot", where="horizon",
                        fix="plan over at least one slot, usually a day or more")
    # The slot's midpoint picks the profile cell: robust to offsets that are not slot multiples.
    _, weekday, sec = local_calendar(starts + profile.slot_s / 2, profile.tz_name)
    slot = np.minimum((sec // profile.slot_s).astype(np.int64), profile.config.slots_per_day - 1)
    return Forecast(profile.tz_name, profile.slot_s, starts, profile.load_rps[weekday, slot].copy(), "profile")


def observed_load(history: History, start_epoch_s: float, horizon_s: float, tz_name: str, slot_s: float) -> Forecast:
    """What actually happened, on the same slot grid as :func:`forecast_load` (NaN where no rows).

    Used for hindsight plans and backtests: plan on this instead of a forecast to get the best
    windows that were possible.
    """
    starts = horizon_slots(start_epoch_s, horizon_s, tz_name, slot_s)
    idx = np.floor((history.epoch_s - starts[0]) / slot_s).astype(np.int64) if len(starts) else np.array([], int)
    keep = (idx >= 0) & (idx < len(starts))
    rate_rps = history.requests / history.step_s
    sums = np.bincount(idx[keep], weights=rate_rps[keep], minlength=len(starts))
    counts = np.bincount(idx[keep], minlength=len(starts))
    with np.errstate(invalid="ignore", divide="ignore"):
        load = np.where(counts > 0, sums / counts, np.nan)
    return Forecast(tz_name, slot_s, starts, load, f"observed:{history.source}")
