"""benchmarks.host_noise's arithmetic: each later day's p99 against the first day's, whole and in
windows at the same offsets into the day (pure; the replay itself is the benchmark's)."""

from __future__ import annotations

import pytest

from benchmarks.host_noise import day_ratios


def test_each_day_is_compared_with_the_first_at_the_same_hours():
    # Day 1: 10 ms all day. Day 2: 10 ms in its first quarter, 30 ms after. Day 3: 20 ms all day.
    recs = [(t * 0.05, 0.010) for t in range(2000)]
    recs += [(100 + t * 0.05, 0.010 if t * 0.05 < 25 else 0.030) for t in range(2000)]
    recs += [(200 + t * 0.05, 0.020) for t in range(2000)]
    day2, day3 = day_ratios(recs, 3, 100.0)
    assert (day2["day"], day3["day"]) == (2, 3)
    assert day2["ratio"] == pytest.approx(3.0) and day3["ratio"] == pytest.approx(2.0)
    assert day2["window_ratios"] == pytest.approx([3.0, 3.0])  # both windows reach into the slow 75 s
    assert day3["window_ratios"] == pytest.approx([2.0, 2.0])
    assert day2["p99_ms"] == pytest.approx(30.0)


def test_a_window_sees_only_its_hours():
    recs = [(t * 0.05, 0.010) for t in range(4000)]
    recs = [(t, 0.050 if 100 + 75 <= t < 200 else lat) for t, lat in recs]  # day 2 slow only after its 75th s
    (day2,) = day_ratios(recs, 2, 100.0)
    assert day2["window_ratios"][0] == pytest.approx(1.0)  # 0-75 s: untouched
    assert day2["window_ratios"][1] > 1.0  # 25-100 s: holds the slow quarter
