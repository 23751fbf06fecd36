"""The law's read pace (``read_every_s``): the governor reads the serving side at every refresh while
anything moves or any bound is near, and only every ``calm_read_s`` while the job runs far inside
them, or has been paused that long. Each read of a Ray node's metrics endpoint costs its agent ~50 ms of CPU on the serving host."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runtime.control.law import Directive, LawConfig, LawState, Level, Reason, decide, read_every_s
from runtime.control.sample import Sample

CFG = LawConfig(slo_p99_ms=100.0, max_workers=1, max_rows_per_s=1000.0, holddown_s=1.0, cooldown_s=3.0,
                queue_limit=20.0, calm_read_s=3.0)
STEADY = LawState(level=Level.RUN, workers=1, rows_per_s=1000.0, steady_since_s=0.0)
AT_MAX = Directive(Level.RUN, 1, 1000.0, Reason.AT_MAX)


def reading(t: float = 10.0, p99_ms: float | None = 30.0, **kw) -> Sample:
    return Sample(time_s=t, p99_ms=p99_ms, rps=50.0, **kw)


def test_a_steady_job_far_inside_every_bound_reads_at_the_calm_pace():
    assert read_every_s(STEADY, AT_MAX, reading(), CFG) == 3.0
    assert read_every_s(STEADY, AT_MAX, reading(p99_ms=70.0, in_flight=14.0, utilization=0.76), CFG) == 3.0  # slack 0.3, load 0.9x


@pytest.mark.parametrize("why, state, directive, sample, cfg", [
    ("latency slack under grow_above_slack", STEADY, AT_MAX, reading(p99_ms=70.1), CFG),
    ("queue slack under grow_above_slack", STEADY, AT_MAX, reading(in_flight=14.5), CFG),
    ("load near its ceiling", STEADY, AT_MAX, reading(utilization=0.77), CFG),
    ("no latency and no queue", STEADY, AT_MAX, reading(p99_ms=None), CFG),
    ("a failed reading", STEADY, AT_MAX, Sample.failed(10.0, "connection refused"), CFG),
    ("just changed", replace(STEADY, steady_since_s=7.1), AT_MAX, reading(), CFG),
    ("never decided", replace(STEADY, steady_since_s=None), AT_MAX, reading(), CFG),
    ("measuring the impact", STEADY, Directive(Level.PAUSE, 0, 0.0, Reason.MEASURING), reading(), CFG),
    ("back from measuring next", replace(STEADY, measuring_rows_per_s=1000.0), AT_MAX, reading(), CFG),
    ("calm reads off", STEADY, AT_MAX, reading(), replace(CFG, calm_read_s=0.0)),
])
def test_anything_moving_or_any_bound_near_reads_every_refresh(why, state, directive, sample, cfg):
    assert read_every_s(state, directive, sample, cfg) == 0.0, why


@pytest.mark.parametrize("reason, sample", [
    (Reason.LOAD_CEILING, reading(p99_ms=75.0, utilization=0.95)),  # at the peak: every bound near
    (Reason.SLO_VIOLATED, reading(p99_ms=130.0)),
    (Reason.COOLDOWN, reading(in_flight=19.0)),
])
def test_a_pause_that_has_stood_reads_at_the_calm_pace_however_near_the_bounds(reason, sample):
    out = LawState(level=Level.PAUSE, steady_since_s=0.0)
    assert read_every_s(out, Directive(Level.PAUSE, 0, 0.0, reason), sample, CFG) == 3.0
    just_out = replace(out, steady_since_s=8.0)  # paused 2 s ago: every refresh still (a short spike resumes sooner)
    assert read_every_s(just_out, Directive(Level.PAUSE, 0, 0.0, reason), sample, CFG) == 0.0


def test_an_idle_service_is_calm():
    assert read_every_s(STEADY, AT_MAX, Sample(10.0, rps=0.0), CFG) == 3.0


def test_decide_dates_each_change_of_level_rate_or_workers_and_nothing_else():
    state, d = decide(STEADY, reading(5.0), CFG)  # ample slack, at the budget: nothing moves
    assert d.level is Level.RUN and d.rows_per_s == 1000.0 and state.steady_since_s == 0.0
    state, d = decide(state, reading(6.0, p99_ms=95.0), CFG)  # thin slack: the rate halves
    assert d.level is Level.THROTTLE and state.steady_since_s == 6.0
    assert read_every_s(state, d, reading(6.0, p99_ms=95.0), CFG) == 0.0
    state, d = decide(state, reading(7.0, p99_ms=120.0), CFG)  # over the SLO: a pause
    assert d.level is Level.PAUSE and state.steady_since_s == 7.0
    state, d = decide(state, reading(8.0, p99_ms=20.0), CFG)  # cooling down: the pause stands, so does its date
    assert d.reason is Reason.COOLDOWN and state.steady_since_s == 7.0
    state, d = decide(state, reading(13.5, p99_ms=20.0), CFG)  # resumed
    assert d.reason is Reason.RESUME and state.steady_since_s == 13.5


def test_a_first_decision_dates_the_state_it_finds():
    state, _ = decide(LawState(), reading(2.0, p99_ms=120.0), CFG)
    assert state.steady_since_s == 2.0


def test_a_new_rate_at_the_same_level_is_a_change():
    throttled = LawState(level=Level.THROTTLE, workers=1, rows_per_s=500.0, steady_since_s=0.0)
    state, d = decide(throttled, reading(5.0, p99_ms=95.0), CFG)
    assert (d.level, d.rows_per_s) == (Level.THROTTLE, 250.0) and state.steady_since_s == 5.0


def test_a_repeated_reading_is_one_load_not_many_and_a_calm_gap_keeps_the_last():
    cfg = replace(CFG, impact_max_ratio=1.1)  # the load is kept for the impact guard
    state = STEADY
    for t in (10.0, 10.25, 10.5, 10.75):  # one reading, repeated between reads
        state, _ = decide(state, reading(t), cfg)
    assert [r[1] for r in state.loads] == [50.0]
    state, _ = decide(state, reading(20.0, counts=((50.0, 40.0), (float("inf"), 40.0))), cfg)  # the next read, 9 s on
    assert [r[0] for r in state.loads] == [10.0, 20.0]
