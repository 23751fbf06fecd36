"""trace_rate_fn and the open-loop schedule: no Ray, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.loadgen import OpenLoopLoad, trace_rate_fn
from runtime.errors import DataError
from runtime.windows.history import History, read_history_csv

TRACE = Path(__file__).resolve().parents[2] / "data" / "nasa-http-1995-07.csv"
UTC_MINUS_4_S = -4 * 3600.0


@pytest.fixture(scope="module")
def nasa() -> History:
    return read_history_csv(TRACE)


def _synthetic_day(counts: list[float]) -> History:
    """One row per minute from 1995-07-03T00:00-04:00 (local midnight)."""
    start_utc_s = 804_729_600.0 + 4 * 3600.0  # 1995-07-03T00:00Z; local midnight (UTC-4) is 4 h later
    n = len(counts)
    return History(epoch_s=start_utc_s + 60.0 * np.arange(n), requests=np.asarray(counts, dtype=float),
                   utc_offsets_s=np.full(n, UTC_MINUS_4_S), source="synthetic")


def test_peak_maps_to_peak_rps_and_day_is_compressed(nasa: History) -> None:
    rate = trace_rate_fn(nasa, seconds_per_day=240.0, peak_rps=60.0)
    assert rate.duration_s == pytest.approx(240.0)
    assert rate.rate_rps.max() == pytest.approx(60.0)
    grid = np.linspace(0.0, 240.0, 24001)
    values = np.array([rate(t) for t in grid])
    assert values.max() == pytest.approx(60.0, rel=1e-3)
    assert values.min() > 0.0
    # One minute of trace lasts 240/1440 s of replay, and the last trace minute lands just before the end.
    assert np.diff(rate.t_s)[0] == pytest.approx(240.0 / 1440.0)
    assert rate.t_s[-1] == pytest.approx(240.0 - 240.0 / 1440.0)


def test_default_day_peaks_around_local_midday(nasa: History) -> None:
    rate = trace_rate_fn(nasa, seconds_per_day=24.0, peak_rps=10.0)  # 1 s of replay = 1 hour of trace
    peak_hour = rate.t_s[np.argmax(rate.rate_rps)]
    assert 10.0 <= peak_hour <= 16.0
    assert rate(4.0) < 0.5 * rate(peak_hour)  # the night trough is well below the peak


def test_raw_minutes_and_multi_day(nasa: History) -> None:
    raw = trace_rate_fn(nasa, seconds_per_day=100.0, peak_rps=50.0, smooth_min=1)
    day = nasa.between(804_729_600.0 + 4 * 3600.0, 804_729_600.0 + 4 * 3600.0 + 86400.0)
    minute = int(np.argmax(day.requests))
    assert raw(minute * 100.0 / 1440.0) == pytest.approx(50.0)
    two = trace_rate_fn(nasa, seconds_per_day=100.0, peak_rps=50.0, days=2.0)
    assert two.duration_s == pytest.approx(200.0)
    assert two.t_s[-1] > 190.0


def test_scaling_and_interpolation_on_a_synthetic_day() -> None:
    history = _synthetic_day([10.0, 20.0, 40.0, 20.0])
    rate = trace_rate_fn(history, seconds_per_day=1440.0, peak_rps=8.0, smooth_min=1)  # 1 minute -> 1 s
    assert rate(0.0) == pytest.approx(2.0)
    assert rate(2.0) == pytest.approx(8.0)
    assert rate(1.5) == pytest.approx(6.0)  # halfway between 4 and 8
    assert rate(-5.0) == pytest.approx(2.0) and rate(1e6) == pytest.approx(4.0)  # edges hold


def test_bad_inputs_raise_clear_errors(nasa: History) -> None:
    with pytest.raises(DataError, match="fewer than 2 rows"):
        trace_rate_fn(nasa, day_start_local="1996-01-01T00:00", seconds_per_day=10.0, peak_rps=1.0)
    with pytest.raises(DataError, match="bad day_start_local"):
        trace_rate_fn(nasa, day_start_local="monday", seconds_per_day=10.0, peak_rps=1.0)
    with pytest.raises(ValueError):
        trace_rate_fn(nasa, seconds_per_day=0.0, peak_rps=1.0)


def test_thinning_follows_the_rate_and_is_seeded() -> None:
    def rate(t_s: float) -> float:  # 0 rps for the first half, 200 rps for the second
        return 0.0 if t_s < 10.0 else 200.0

    load = OpenLoopLoad("http://127.0.0.1:9/", rate, duration_s=20.0, seed=3)
    times = np.array(load.arrival_times_s())
    assert times.min() >= 10.0
    assert len(times) == pytest.approx(2000, rel=0.1)
    assert list(times) == OpenLoopLoad("http://127.0.0.1:9/", rate, 20.0, seed=3).arrival_times_s()
    assert np.all(np.diff(times) > 0)


def test_window_stats_on_recorded_rows() -> None:
    load = OpenLoopLoad("http://127.0.0.1:9/", lambda t: 1.0, duration_s=10.0)
    for i in range(100):
        load._record(i * 0.1, 0.001 * (i + 1), "ok")
    load._record(5.05, None, "timeout")
    load._record(5.06, None, "drop")
    stats = load.window_stats(0.0, 10.0)
    assert stats["count"] == 102 and stats["errors"] == 2
    assert stats["timeouts"] == 1 and stats["drops"] == 1
    assert stats["rps"] == pytest.approx(10.2)
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert 99.0 <= stats["p99_ms"] <= 100.0
    assert load.window_stats(20.0, 30.0)["p99_ms"] is None
    assert stats["send_lag_p99_ms"] is None  # nothing was sent through the loop
    assert load.records[-1] == (5.06, None, False)
