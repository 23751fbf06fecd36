"""Profile, forecast and portfolio placement: pure functions, synthetic inputs, exact expectations."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from runtime.errors import SpecError
from runtime.windows.history import History
from runtime.windows.portfolio import Candidates, components, greedy, solve_portfolio
from runtime.windows.profile import (Forecast, ProfileConfig, fit_weekly_profile, forecast_load, horizon_end_epoch_s,
                             local_calendar,
                             observed_load, robust_high_quantile, utc_offsets_s)
from runtime.windows.placement import (Blackout, JobRequest, PlanConstraints, PriceSchedule, Reason, estimate_duration_s,
                             expand_runs, plan_windows, pool_usage)

NY = "America/New_York"
H = 3600.0
DAY = 86_400.0


# --- builders -----------------------------------------------------------------------------------

def dip_at_3_to_5(weekday: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """2 rps all day, 0.5 rps from 03:00 to 05:00 local; weekends at 1.5 rps in daytime."""
    base = np.where(weekday >= 5, 1.5, 2.0)
    return np.where((hour >= 3) & (hour < 5), 0.5, base)


def synth_history(start: datetime, days: float, rate: Callable = dip_at_3_to_5, *, step_s: float = 60.0,
                  noise: float = 0.0, seed: int = 0, tz: str = NY) -> History:
    """Per-step request counts following ``rate(weekday, local_hour)`` on ``tz``'s wall clock."""
    epoch = start.timestamp() + step_s * np.arange(int(days * DAY / step_s))
    _, weekday, sec = local_calendar(epoch, tz)
    rps = rate(weekday, sec / H)
    if noise:
        rps = rps * np.random.default_rng(seed).uniform(1 - noise, 1 + noise, len(rps))
    return History(epoch, rps * step_s, utc_offsets_s(epoch, tz), "synthetic")


def keep(h: History, mask: np.ndarray) -> History:
    return History(h.epoch_s[mask], h.requests[mask], h.utc_offsets_s[mask], h.source)


def hourly_forecast(load: list[float] | np.ndarray, start: datetime = datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")),
                    slot_s: float = H, tz: str = "UTC") -> Forecast:
    load = np.asarray(load, dtype=np.float64)
    return Forecast(tz, slot_s, start.timestamp() + slot_s * np.arange(len(load)), load)


def local(epoch_s: float, tz: str = NY) -> datetime:
    return datetime.fromtimestamp(epoch_s, ZoneInfo(tz))


def slot_of(hour: float, slot_s: float = 900.0) -> int:
    return int(hour * H // slot_s)


# --- robust quantile ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, values, expected", [
    ("plain", [1.0, 2, 3, 4, 5], 4.6),
    ("outage zeros dropped", [10.0, 11, 12, 10, 11, 0, 0], pytest.approx(11.6, abs=0.2)),
    ("spike clipped to median + 3 MAD", [10.0, 11, 12, 10, 11, 12, 500], pytest.approx(13.38, abs=0.01)),
    ("constant", [3.0, 3, 3], 3.0),
    ("nan ignored", [np.nan, 2.0, 2.0], 2.0),
    ("nothing", [np.nan], None),
])
def test_robust_high_quantile(name, values, expected):
    got = robust_high_quantile(np.array(values), 0.9, 3.0)
    if expected is None:
        assert np.isnan(got), name
    else:
        assert got == expected, name


# --- profile ------------------------------------------------------------------------------------

EXACT = ProfileConfig(smooth_slots=0)


@pytest.mark.parametrize("name, start", [
    ("spring forward (2024-03-10)", datetime(2024, 2, 19, tzinfo=ZoneInfo(NY))),
    ("fall back (2024-11-03)", datetime(2024, 10, 14, tzinfo=ZoneInfo(NY))),
])
def test_profile_keys_slots_on_the_local_clock_across_dst(name, start):
    h = synth_history(start, 35)  # five weeks straddling the change
    assert len(set(h.utc_offsets_s)) == 2, "the history must cross a DST change"
    p = fit_weekly_profile(h, NY, EXACT)
    for weekday in range(7):
        assert np.all(p.load_rps[weekday, slot_of(3):slot_of(5)] == 0.5), (name, weekday)
        assert p.load_rps[weekday, slot_of(2.75)] > 1 and p.load_rps[weekday, slot_of(5)] > 1, (name, weekday)


@pytest.mark.parametrize("name, day, slots", [
    ("spring forward: 23 h", datetime(2024, 3, 10, tzinfo=ZoneInfo(NY)), 92),
    ("fall back: 25 h", datetime(2024, 11, 3, tzinfo=ZoneInfo(NY)), 100),
    ("ordinary day", datetime(2024, 3, 12, tzinfo=ZoneInfo(NY)), 96),
])
def test_forecast_on_dst_days_follows_the_wall_clock(name, day, slots):
    h = synth_history(day - timedelta(days=28), 28)
    p = fit_weekly_profile(h, NY, EXACT)
    end = (day + timedelta(days=1)).timestamp()  # next local midnight
    f = forecast_load(p, day.timestamp(), end - day.timestamp())
    assert len(f.load_rps) == slots, name
    lows = [local(t).hour for t, v in zip(f.start_epoch_s, f.load_rps) if v == 0.5]
    assert sorted(set(lows)) == [3, 4], name


@pytest.mark.parametrize("name, start", [
    ("spring forward week", datetime(2024, 3, 8, tzinfo=ZoneInfo(NY))),
    ("fall back week", datetime(2024, 11, 1, tzinfo=ZoneInfo(NY))),
])
def test_daily_windows_stay_at_local_3am_across_dst(name, start):
    p = fit_weekly_profile(synth_history(start - timedelta(days=28), 28), NY, EXACT)
    end = horizon_end_epoch_s(start.timestamp(), 7, NY)
    assert end == (start + timedelta(days=7)).timestamp()  # local midnight to local midnight
    f = forecast_load(p, start.timestamp(), end - start.timestamp())
    plan = plan_windows(f, [JobRequest("nightly", duration_s=2 * H, cadence_days=1)], PlanConstraints(pool_workers=1))
    assert len(plan.windows) == 7 and not plan.unplaced, name
    assert {(local(w.start_epoch_s).hour, local(w.start_epoch_s).minute) for w in plan.windows} == {(3, 0)}, name


def test_weekday_and_weekend_are_told_apart():
    def weekend_night_owls(weekday, hour):
        return np.where(weekday >= 5, np.where((hour >= 7) & (hour < 9), 0.2, 1.0),
                        np.where((hour >= 3) & (hour < 5), 0.5, 2.0))

    p = fit_weekly_profile(synth_history(datetime(2024, 1, 1, tzinfo=ZoneInfo(NY)), 21, weekend_night_owls), NY, EXACT)
    assert p.load_rps[5, slot_of(8)] == pytest.approx(0.2) and p.load_rps[6, slot_of(8)] == pytest.approx(0.2)
    assert p.load_rps[0, slot_of(8)] == 2.0 and p.load_rps[4, slot_of(4)] == 0.5
    assert p.load_rps[6, slot_of(4)] == 1.0


def test_gaps_are_missing_data_not_zero_traffic():
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo(NY))
    full = synth_history(start, 28, noise=0.1)
    rng = np.random.default_rng(1)
    mask = rng.uniform(size=len(full.epoch_s)) > 0.3  # 30 % of rows lost at random
    day_no, _, _ = local_calendar(full.epoch_s, NY)
    mask &= day_no != day_no[0] + 9  # and one whole day missing
    gappy = keep(full, mask)
    a, b = fit_weekly_profile(full, NY), fit_weekly_profile(gappy, NY)
    assert np.all(np.isfinite(b.load_rps))
    assert np.max(np.abs(b.load_rps / a.load_rps - 1)) < 0.1
    assert b.load_rps.min() > 0.4  # a gap never reads as a quiet slot


def test_slots_never_observed_forecast_nan_and_cannot_be_planned():
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo(NY))  # a Monday
    h = synth_history(start, 5)  # Monday to Friday only: weekends unknown
    p = fit_weekly_profile(h, NY)
    assert np.all(np.isnan(p.load_rps[5:])) and np.all(np.isfinite(p.load_rps[:5]))
    saturday = datetime(2024, 1, 13, tzinfo=ZoneInfo(NY))
    f = forecast_load(p, saturday.timestamp(), 2 * DAY)
    plan = plan_windows(f, [JobRequest("j", duration_s=H)], PlanConstraints(pool_workers=1))
    assert not plan.windows and plan.unplaced[0].reason is Reason.NO_FORECAST


@pytest.mark.parametrize("name, factor, tolerance", [
    ("outage week", 0.0, 0.05),
    ("degraded week", 0.1, 0.05),
    # A whole busy week is a third of the weekday samples: it is clipped, not ignored (conservative).
    ("launch week", 5.0, 0.2),
])
def test_one_anomalous_week_does_not_drag_the_profile(name, factor, tolerance):
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo(NY))
    clean = synth_history(start, 28, noise=0.15, seed=3)
    weird = synth_history(start, 28, noise=0.15, seed=3)
    week2 = (weird.epoch_s >= start.timestamp() + 7 * DAY) & (weird.epoch_s < start.timestamp() + 14 * DAY)
    weird.requests[week2] *= factor
    a, b = fit_weekly_profile(clean, NY), fit_weekly_profile(weird, NY)
    assert np.max(np.abs(b.load_rps / a.load_rps - 1)) < tolerance, name
    f_a = forecast_load(a, start.timestamp() + 28 * DAY, 7 * DAY)
    f_b = forecast_load(b, start.timestamp() + 28 * DAY, 7 * DAY)
    job = [JobRequest("daily", duration_s=1.5 * H, cadence_days=1)]
    starts_a = [w.start_epoch_s for w in plan_windows(f_a, job, PlanConstraints(pool_workers=1)).windows]
    starts_b = [w.start_epoch_s for w in plan_windows(f_b, job, PlanConstraints(pool_workers=1)).windows]
    assert all(3 <= local(s).hour < 5 for s in starts_b), name
    assert len(starts_a) == len(starts_b) == 7


def test_one_launch_day_does_not_drag_its_slots():
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo(NY))
    h = synth_history(start, 21, noise=0.1)
    day_no, _, _ = local_calendar(h.epoch_s, NY)
    spiked = History(h.epoch_s, np.where(day_no == day_no[0] + 9, h.requests * 10, h.requests), h.utc_offsets_s, "x")
    a, b = fit_weekly_profile(h, NY), fit_weekly_profile(spiked, NY)
    assert np.max(np.abs(b.load_rps / a.load_rps - 1)) < 0.05


def test_observed_load_matches_history_and_marks_gaps():
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo(NY))
    h = synth_history(start, 1)
    h = keep(h, ~((h.epoch_s >= start.timestamp() + 6 * H) & (h.epoch_s < start.timestamp() + 7 * H)))
    o = observed_load(h, start.timestamp(), DAY, NY, 900.0)
    assert len(o.load_rps) == 96 and np.all(np.isnan(o.load_rps[24:28]))
    assert o.load_rps[13] == 0.5 and o.load_rps[40] == 2.0


@pytest.mark.parametrize("kwargs, fragment", [
    ({"slot_s": 7 * 60.0}, "must divide a day"),
    ({"quantile": 0.0}, "quantile"),
    ({"day_groups": ((0, 1, 2), (5, 6))}, "day_groups"),
])
def test_profile_config_refuses_nonsense(kwargs, fragment):
    with pytest.raises(SpecError, match=fragment):
        ProfileConfig(**kwargs)


# --- runs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, job, expected", [
    ("one-off", JobRequest("j", H), [(0, None)]),
    ("daily", JobRequest("j", H, cadence_days=1), [(24 * d, 24 * d + 24) for d in range(7)]),
    ("every 3 days", JobRequest("j", H, cadence_days=3), [(0, 72), (72, 144), (144, 216)]),
    ("daily after 04:00 refresh", JobRequest("j", H, cadence_days=1, data_refresh_s_of_day=4 * H),
     [(24 * d + 4, 24 * d + 28) for d in range(7)]),
    ("one-off after refresh", JobRequest("j", H, data_refresh_s_of_day=4 * H), [(4, None)]),
    ("deadline cuts the periods", JobRequest("j", H, cadence_days=1, deadline_epoch_s=1_704_067_200 + 50 * H),
     [(0, 24), (24, 48), (48, 50)]),
    ("not before", JobRequest("j", H, not_before_epoch_s=1_704_067_200 + 30 * H), [(30, None)]),
])
def test_expand_runs(name, job, expected):
    f = hourly_forecast(np.ones(7 * 24))
    t0 = f.start_epoch_s[0]
    got = [((r.release_epoch_s - t0) / H, None if r.due_epoch_s == float("inf") else (r.due_epoch_s - t0) / H)
           for r in expand_runs(job, f)]
    assert got == expected, name


def test_daily_periods_are_local_days_across_dst():
    start = datetime(2024, 3, 9, tzinfo=ZoneInfo(NY))
    f = Forecast(NY, 900.0, start.timestamp() + 900.0 * np.arange(3 * 96), np.ones(3 * 96))
    runs = expand_runs(JobRequest("j", H, cadence_days=1, data_refresh_s_of_day=2.5 * H), f)
    lengths = [(r.due_epoch_s - r.release_epoch_s) / H for r in runs]
    # Mar 10 02:30 does not exist: the refresh happens at 03:30 EDT, 24 h after Mar 9 02:30 EST.
    assert lengths[:2] == [24.0, 23.0]
    assert [local(r.release_epoch_s).hour for r in runs] == [2, 3, 2]


@pytest.mark.parametrize("durations, quantile, expected", [
    ([3000, 3100, 3300, 2900, 9000], 0.8, 4440.0),
    ([600], 0.8, 600.0),
    ([100, 200, 0, -5], 0.5, 150.0),
])
def test_estimate_duration_from_past_runs(durations, quantile, expected):
    assert estimate_duration_s(durations, quantile) == pytest.approx(expected)


def test_estimate_duration_needs_data():
    with pytest.raises(SpecError, match="no past run durations"):
        estimate_duration_s([])


# --- placement ----------------------------------------------------------------------------------

VALLEY = [5, 5, 4, 1, 1, 1, 3, 5] * 3  # hourly, one day = 24 slots; quiet 03:00-06:00


def test_picks_the_window_with_least_load():
    plan = plan_windows(hourly_forecast(VALLEY), [JobRequest("j", 3 * H)], PlanConstraints(pool_workers=1))
    (w,) = plan.windows
    assert (w.start_epoch_s - plan.horizon_start_epoch_s) / H == 3
    assert w.mean_load_rps == 1.0 and w.peak_load_rps == 1.0 and plan.proven_optimal


def test_validation_time_extends_the_window():
    plan = plan_windows(hourly_forecast(VALLEY), [JobRequest("j", 2 * H, validation_s=0.5 * H)],
                        PlanConstraints(pool_workers=1))
    (w,) = plan.windows
    assert w.end_epoch_s - w.start_epoch_s == 2.5 * H


@pytest.mark.parametrize("name, blackout_hours, expected_start", [
    ("over the first valley", [(2, 7)], 11),
    ("over the whole first half", [(0, 8)], 11),
    ("partial overlap", [(5, 6)], 11),
    ("elsewhere", [(12, 16)], 3),
    ("one hour in each valley", [(3, 4), (11, 12)], 4),  # 04:00 and 12:00 tie at cost 5: earliest wins
])
def test_blackouts_move_the_window(name, blackout_hours, expected_start):
    load = [5, 5, 4, 1, 1, 1, 3, 5, 5, 5, 4, 1, 1, 1, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5]
    f = hourly_forecast(load)
    t0 = f.start_epoch_s[0]
    blackouts = tuple(Blackout("b", t0 + a * H, t0 + b * H) for a, b in blackout_hours)
    plan = plan_windows(f, [JobRequest("j", 3 * H)], PlanConstraints(pool_workers=1, blackouts=blackouts))
    (w,) = plan.windows
    assert (w.start_epoch_s - t0) / H == expected_start, name
    for b in blackouts:
        assert w.end_epoch_s <= b.start_epoch_s or w.start_epoch_s >= b.end_epoch_s


def test_blackout_over_everything_is_reported():
    f = hourly_forecast(VALLEY)
    plan = plan_windows(f, [JobRequest("j", 3 * H)], PlanConstraints(
        pool_workers=1, blackouts=(Blackout("all", f.start_epoch_s[0], f.end_epoch_s),)))
    assert not plan.windows and plan.unplaced[0].reason is Reason.BLACKOUT


def test_blackouts_honoured_in_a_busy_portfolio():
    p = fit_weekly_profile(synth_history(datetime(2024, 1, 1, tzinfo=ZoneInfo(NY)), 21, noise=0.1), NY)
    start = datetime(2024, 1, 22, tzinfo=ZoneInfo(NY))
    f = forecast_load(p, start.timestamp(), 7 * DAY)
    blackouts = tuple(Blackout(f"b{d}", (start + timedelta(days=d, hours=2)).timestamp(),
                               (start + timedelta(days=d, hours=4)).timestamp()) for d in (0, 2, 4))
    jobs = [JobRequest("a", 2 * H, workers=2, cadence_days=1), JobRequest("b", H, cadence_days=1),
            JobRequest("c", 3 * H, workers=3)]
    plan = plan_windows(f, jobs, PlanConstraints(pool_workers=4, blackouts=blackouts))
    assert len(plan.windows) == 15
    for w, b in itertools.product(plan.windows, blackouts):
        assert w.end_epoch_s <= b.start_epoch_s or w.start_epoch_s >= b.end_epoch_s


@pytest.mark.parametrize("name, threshold, expected", [
    ("loose", 10.0, 3), ("at the valley", 1.0, 3), ("tight", 0.5, None),
])
def test_headroom_threshold(name, threshold, expected):
    plan = plan_windows(hourly_forecast(VALLEY), [JobRequest("j", 3 * H)],
                        PlanConstraints(pool_workers=1, max_load_rps=threshold))
    if expected is None:
        assert plan.unplaced[0].reason is Reason.OVER_THRESHOLD, name
    else:
        assert (plan.windows[0].start_epoch_s - plan.horizon_start_epoch_s) / H == expected, name
        assert plan.windows[0].peak_load_rps <= threshold


def test_data_refresh_time_is_honoured():
    # The quiet hours are 03:00-05:00; data refreshes at 04:00. A 2-h run may not straddle 04:00:
    # it processes the data of one refresh and must finish before the next.
    p = fit_weekly_profile(synth_history(datetime(2024, 1, 1, tzinfo=ZoneInfo(NY)), 21), NY, EXACT)
    start = datetime(2024, 1, 22, tzinfo=ZoneInfo(NY))
    f = forecast_load(p, start.timestamp(), 7 * DAY)
    job = JobRequest("after-refresh", duration_s=2 * H, cadence_days=1, data_refresh_s_of_day=4 * H)
    plan = plan_windows(f, [job], PlanConstraints(pool_workers=1))
    assert len(plan.windows) == 7
    for k, w in enumerate(plan.windows):
        refresh = (start + timedelta(days=k, hours=4)).timestamp()
        assert refresh <= w.start_epoch_s and w.end_epoch_s <= refresh + DAY
    free = plan_windows(f, [JobRequest("free", duration_s=2 * H, cadence_days=1)], PlanConstraints(pool_workers=1))
    assert {local(w.start_epoch_s).hour for w in free.windows} == {3}  # unconstrained, it would straddle 04:00


def test_deadline_and_not_before():
    f = hourly_forecast(VALLEY)
    t0 = f.start_epoch_s[0]
    late = plan_windows(f, [JobRequest("j", 3 * H, not_before_epoch_s=t0 + 7 * H)], PlanConstraints(pool_workers=1))
    assert (late.windows[0].start_epoch_s - t0) / H == 11
    early = plan_windows(f, [JobRequest("j", 3 * H, deadline_epoch_s=t0 + 5 * H)], PlanConstraints(pool_workers=1))
    assert early.windows[0].end_epoch_s <= t0 + 5 * H
    none = plan_windows(f, [JobRequest("j", 3 * H, deadline_epoch_s=t0 + 2 * H)], PlanConstraints(pool_workers=1))
    assert none.unplaced[0].reason is Reason.WINDOW_TOO_SHORT


@pytest.mark.parametrize("name, pool, jobs", [
    ("two big jobs, room for one", 3, [JobRequest("a", 3 * H, workers=2), JobRequest("b", 3 * H, workers=2)]),
    ("daily trio", 2, [JobRequest(n, 2 * H, cadence_days=1) for n in "abc"]),
    ("mixed", 4, [JobRequest("a", 4 * H, workers=3, cadence_days=1), JobRequest("b", 2 * H, workers=2, cadence_days=1),
                  JobRequest("c", H, workers=1, cadence_days=1, data_refresh_s_of_day=2 * H)]),
    ("serial", 1, [JobRequest(n, 2 * H) for n in "abcdef"]),
])
def test_pool_capacity_is_never_exceeded(name, pool, jobs):
    f = hourly_forecast(VALLEY * 3)
    plan = plan_windows(f, jobs, PlanConstraints(pool_workers=pool))
    assert pool_usage(plan, f).max() <= pool, name
    assert plan.proven_optimal and not plan.unplaced, name


def test_too_many_workers_and_a_full_pool_are_reported():
    f = hourly_forecast(VALLEY[:8])
    plan = plan_windows(f, [JobRequest("huge", H, workers=5), JobRequest("a", 6 * H, workers=2),
                            JobRequest("b", 6 * H, workers=2)], PlanConstraints(pool_workers=3))
    reasons = {u.job: u.reason for u in plan.unplaced}
    assert reasons["huge"] is Reason.EXCEEDS_POOL
    assert sorted(reasons.values(), key=str) == sorted([Reason.EXCEEDS_POOL, Reason.POOL_FULL], key=str)
    assert len(plan.windows) == 1


def test_portfolio_beats_one_at_a_time():
    # One at a time, the long job takes the valley and the short one, which may only run 03:00-06:00,
    # finds the pool full. Together, both fit.
    f = hourly_forecast([9, 9, 2, 1, 1, 1, 2, 9, 9, 9, 9, 9])
    t0 = f.start_epoch_s[0]
    jobs = [JobRequest("long", 3 * H), JobRequest("short", H, not_before_epoch_s=t0 + 3 * H, deadline_epoch_s=t0 + 6 * H)]
    together = plan_windows(f, jobs, PlanConstraints(pool_workers=1))
    alone = plan_windows(f, jobs, PlanConstraints(pool_workers=1), strategy="greedy")
    assert together.proven_optimal and together.method == "milp"
    assert len(together.windows) == 2 and not together.unplaced
    assert [(u.job, u.reason) for u in alone.unplaced] == [("short", Reason.POOL_FULL)]
    assert pool_usage(together, f).max() <= 1


def test_portfolio_lowers_cost_when_all_fit_anyway():
    # Two 2-worker jobs on a 3-worker pool cannot overlap; greedy gives the first one the best spot.
    f = hourly_forecast([9, 3, 1, 1, 2, 9, 9, 9, 2, 2, 9, 9])
    t0 = f.start_epoch_s[0]
    jobs = [JobRequest("a", 2 * H, workers=2), JobRequest("b", 2 * H, workers=2, deadline_epoch_s=t0 + 5 * H)]
    together = plan_windows(f, jobs, PlanConstraints(pool_workers=3))
    alone = plan_windows(f, jobs, PlanConstraints(pool_workers=3), strategy="greedy")
    assert len(together.windows) == len(alone.windows) == 2
    assert together.total_cost < alone.total_cost - 1e-9


def test_prices_weigh_the_choice():
    flat = hourly_forecast(np.ones(24))
    prices = PriceSchedule(tuple(0.2 if h == 10 or h == 11 else 1.0 for h in range(24)))
    cheap = plan_windows(flat, [JobRequest("j", 2 * H)], PlanConstraints(pool_workers=1, prices=prices))
    assert local(cheap.windows[0].start_epoch_s, "UTC").hour == 10
    assert cheap.windows[0].mean_price == pytest.approx(0.2)
    ignored = plan_windows(flat, [JobRequest("j", 2 * H)], PlanConstraints(pool_workers=1, prices=prices,
                                                                           price_weight=0.0))
    assert local(ignored.windows[0].start_epoch_s, "UTC").hour == 0  # ties go to the earliest start


def test_weekend_prices():
    start = datetime(2024, 1, 5, tzinfo=ZoneInfo("UTC"))  # a Friday
    f = hourly_forecast(np.ones(72), start=start)
    prices = PriceSchedule(tuple([1.0] * 24), weekend_hourly_price=tuple([0.5] * 24))
    plan = plan_windows(f, [JobRequest("j", 2 * H)], PlanConstraints(pool_workers=1, prices=prices))
    assert local(plan.windows[0].start_epoch_s, "UTC").weekday() == 5


def test_same_input_same_plan():
    p = fit_weekly_profile(synth_history(datetime(2024, 1, 1, tzinfo=ZoneInfo(NY)), 21, noise=0.2), NY)
    start = datetime(2024, 1, 22, tzinfo=ZoneInfo(NY)).timestamp()
    jobs = [JobRequest("a", 3 * H, workers=2, cadence_days=1), JobRequest("b", 2 * H, workers=2, cadence_days=1),
            JobRequest("c", 5 * H, workers=1)]
    plans = [plan_windows(forecast_load(p, start, 3 * DAY), jobs, PlanConstraints(pool_workers=3)) for _ in range(2)]
    assert plans[0] == plans[1]
    assert plans[0].method == "milp" and len(plans[0].windows) == 7


def test_plan_input_errors():
    f = hourly_forecast(VALLEY)
    with pytest.raises(SpecError, match="unique"):
        plan_windows(f, [JobRequest("a", H), JobRequest("a", H)], PlanConstraints(pool_workers=1))
    with pytest.raises(SpecError, match="pool_workers"):
        plan_windows(f, [JobRequest("a", H)], PlanConstraints(pool_workers=0))
    with pytest.raises(SpecError, match="24 prices"):
        PriceSchedule((1.0,) * 23)
    with pytest.raises(SpecError, match="duration_s"):
        JobRequest("a", 0)


# --- the portfolio solver against brute force ---------------------------------------------------

def brute_force(runs: list[Candidates], capacity: int) -> tuple[int, float]:
    """(runs placed, least cost) over every combination, skips included."""
    best = (-1, float("inf"))
    for combo in itertools.product(*[[None, *c.starts.tolist()] for c in runs]):
        usage = np.zeros(64, dtype=int)
        cost = 0.0
        for c, s in zip(runs, combo):
            if s is not None:
                usage[s:s + c.n_slots] += c.workers
                cost += float(c.costs[c.starts.tolist().index(s)])
        if usage.max() <= capacity:
            placed = sum(s is not None for s in combo)
            if (placed, -cost) > (best[0], -best[1]):
                best = (placed, cost)
    return best


def random_runs(seed: int) -> tuple[list[Candidates], int]:
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(rng.integers(2, 5)):
        starts = np.sort(rng.choice(12, size=rng.integers(1, 5), replace=False))
        costs = rng.uniform(0, 10, len(starts)).round(3)
        order = np.lexsort((starts, costs))
        runs.append(Candidates(int(rng.integers(1, 3)), int(rng.integers(1, 5)), starts[order], costs[order]))
    return runs, int(rng.integers(1, 4))


@pytest.mark.parametrize("seed", range(40))
def test_solver_is_exact(seed):
    runs, capacity = random_runs(seed)
    solution = solve_portfolio(runs, capacity)
    placed, cost = brute_force(runs, capacity)
    assert sum(s is not None for s in solution.starts) == placed
    assert solution.total_cost == pytest.approx(cost, abs=1e-6)
    assert solution.proven_optimal
    usage = np.zeros(64, dtype=int)
    for c, s in zip(runs, solution.starts):
        if s is not None:
            usage[s:s + c.n_slots] += c.workers
    assert usage.max() <= capacity
    assert solution.total_cost <= solve_portfolio(runs, capacity, strategy="greedy").total_cost + 1e-9 or \
        sum(s is not None for s in greedy(runs, capacity)) < placed


def test_components_split_runs_that_cannot_meet():
    runs = [Candidates(1, 2, np.array([0, 1]), np.array([1.0, 2.0])),
            Candidates(1, 2, np.array([2]), np.array([1.0])),
            Candidates(1, 2, np.array([10]), np.array([1.0]))]
    assert components(runs) == [[0, 1], [2]]


def test_relaxation_is_used_when_the_pool_is_wide_enough():
    runs = [Candidates(1, 3, np.array([0, 5]), np.array([1.0, 2.0])) for _ in range(3)]
    solution = solve_portfolio(runs, capacity=3)
    assert solution.method == "relaxation" and solution.starts == (0, 0, 0) and solution.proven_optimal
