"""The control law: one table row per Reason, scripted tick-by-tick scenarios, and invariants under hypothesis."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.control.law import Directive, LawConfig, LawState, Level, Reason, decide, slack_of
from runtime.control.sample import Sample

SLO_MS = 100.0
CFG = LawConfig(slo_p99_ms=SLO_MS, max_workers=3, max_rows_per_s=1000.0, holddown_s=2.0, cooldown_s=3.0, queue_limit=20.0)
LAW_PAUSES = {Reason.TELEMETRY_MISSING, Reason.TELEMETRY_STALE, Reason.LOAD_CEILING, Reason.QUEUE_LIMIT, Reason.SLO_VIOLATED,
              Reason.IMPACT}


# --- builders -----------------------------------------------------------------------------------

def at(t: float, slack: float | None = None, *, util: float | None = None, cfg: LawConfig = CFG, **kw) -> Sample:
    """A sample at time ``t`` whose p99 gives exactly ``slack`` against ``cfg``'s SLO."""
    p99 = None if slack is None else cfg.slo_p99_ms * (1.0 - slack)
    return Sample(time_s=t, p99_ms=p99, rps=10.0, utilization=util, **kw)


def running(rows: float = 1000.0, workers: int = 1, **kw) -> LawState:
    level = Level.RUN if rows >= CFG.max_rows_per_s else Level.THROTTLE
    return LawState(level=level, workers=workers, rows_per_s=rows, **kw)


def paused(at_s: float | None) -> LawState:
    return LawState(level=Level.PAUSE, workers=0, rows_per_s=0.0, paused_at_s=at_s)


def run_script(state: LawState, samples: list[Sample], cfg: LawConfig = CFG) -> tuple[LawState, list[Directive]]:
    out = []
    for s in samples:
        state, d = decide(state, s, cfg)
        out.append(d)
    return state, out


def test_a_pause_for_hurting_serving_remembers_the_load_and_the_rate_and_halves_it_there():
    """SLO broken at 60 % load at 1000 rows/s: at that load (less the margin) the job comes back at no
    more than 500; each further hurt there halves the cap; a cap below the floor bans the load."""
    state = running(1000.0, 1, running_since_s=0.0)
    state, d = decide(state, at(10, -0.2, util=0.6), CFG)
    assert d.reason is Reason.SLO_VIOLATED and (state.hurt_utilization, state.hurt_rows_per_s, state.hurt_at_s) == (0.6, 1000.0, 10)
    state, d = decide(state, at(20, 0.9, util=0.58), CFG)  # latency fine again, the load still near 60 %
    assert d.reason is Reason.RESUME and d.rows_per_s == 250.0
    state, d = decide(state, at(21, 0.9, util=0.58), CFG)  # ample from here: the hold-down runs
    state, d = decide(state, at(23, 0.9, util=0.58), CFG)
    assert d.reason is Reason.GROW and d.rows_per_s == 500.0  # up to the cap...
    state, d = decide(state, at(25, 0.9, util=0.58), CFG)
    assert d.reason is Reason.LOAD_MEMORY and d.level is Level.THROTTLE and d.rows_per_s == 500.0  # ...and no further
    state, d = decide(state, at(27.5, 0.9, util=0.3), CFG)  # well below the remembered load: grows past it
    assert d.reason is Reason.GROW and d.rows_per_s == 750.0
    state, d = decide(state, at(28, 0.9, util=0.59), CFG)  # the load comes back: down to the cap at once
    assert d.reason is Reason.LOAD_MEMORY and d.rows_per_s == 500.0
    caps, t = [], 30.0
    while True:  # hurt again and again at that load: each time at half the rate
        state, d = decide(state, at(t, -0.2, util=0.62), CFG)
        assert d.reason is Reason.SLO_VIOLATED and state.hurt_utilization == 0.6  # the lowest load that hurt
        t += 10
        state, d = decide(state, at(t, 0.9, util=0.58), CFG)
        if d.level is Level.PAUSE:
            break
        caps.append(d.rows_per_s)
        t += 10
    assert caps == [250.0, 125.0, 62.5] and d.reason is Reason.LOAD_MEMORY  # 31.25 < the 50 rows/s floor: banned
    state, d = decide(state, at(t + 10, 0.9, util=0.45), CFG)
    assert d.reason is Reason.RESUME and d.rows_per_s == 250.0  # below the banned load, training is free to run
    state, d = decide(state, at(t + 11, 0.9, util=0.55), CFG)
    assert d.reason is Reason.LOAD_CEILING and d.level is Level.PAUSE  # out before it hurts again


def test_a_violation_right_after_a_resume_is_the_start_up_and_teaches_no_load():
    """A worker starting (imports, a first batch) is not what the job costs serving once it runs."""
    state, d = decide(paused(0.0), at(10, 0.5, util=0.3), CFG)
    assert d.reason is Reason.RESUME and state.running_since_s == 10
    state, d = decide(state, at(11, -0.2, util=0.3), CFG)  # 1 s in: the start-up
    assert d.reason is Reason.SLO_VIOLATED and state.hurt_utilization is None
    state, d = decide(state, at(20, 0.5, util=0.3), CFG)
    state, d = decide(state, at(24, -0.2, util=0.35), CFG)  # 4 s of steady training: this one counts
    assert d.reason is Reason.SLO_VIOLATED and state.hurt_utilization == 0.35


def test_a_pause_for_missing_telemetry_or_while_paused_remembers_no_load():
    state, _ = decide(running(), Sample.failed(10.0, "down"), CFG)
    assert state.hurt_utilization is None
    state, _ = decide(paused(0.0), at(10, -0.5, util=0.7), CFG)  # already out: nothing of ours hurt it
    assert state.hurt_utilization is None


# --- one tick per reason ------------------------------------------------------------------------

P = Level.PAUSE
CASES = [
    # id, state, sample, reason, level, workers, rows
    ("missing-error", running(), Sample.failed(10.0, "down"), Reason.TELEMETRY_MISSING, P, 0, 0.0),
    ("missing-error-despite-good-p99", running(), at(10, 0.9, error="garbage"), Reason.TELEMETRY_MISSING, P, 0, 0.0),
    ("missing-no-p99-no-util", running(), Sample(time_s=10.0, rps=5.0), Reason.TELEMETRY_MISSING, P, 0, 0.0),
    ("missing-nan-p99-no-util", running(), Sample(time_s=10.0, p99_ms=math.nan), Reason.TELEMETRY_MISSING, P, 0, 0.0),
    ("missing-while-paused", paused(None), Sample(time_s=10.0), Reason.TELEMETRY_MISSING, P, 0, 0.0),
    ("stale", running(), at(10, 0.9, staleness_s=5.01), Reason.TELEMETRY_STALE, P, 0, 0.0),
    ("load-ceiling", running(), at(10, 0.9, util=0.86), Reason.LOAD_CEILING, P, 0, 0.0),
    ("load-ceiling-util-only", running(), at(10, None, util=0.99), Reason.LOAD_CEILING, P, 0, 0.0),
    ("queue-limit", running(), at(10, 0.9, in_flight=20.5), Reason.QUEUE_LIMIT, P, 0, 0.0),
    ("queue-limit-before-the-p99-moves", running(), at(10, 0.5, in_flight=40.0), Reason.QUEUE_LIMIT, P, 0, 0.0),
    ("missing-in-flight-but-nothing-finished", running(), Sample(time_s=10.0, rps=0.0, in_flight=3.0),
     Reason.TELEMETRY_MISSING, P, 0, 0.0),
    ("slo-violated", running(), at(10, -0.01), Reason.SLO_VIOLATED, P, 0, 0.0),
    ("slo-violated-wins-over-cooldown", paused(9.0), at(10, -0.5), Reason.SLO_VIOLATED, P, 0, 0.0),
    ("cooldown", paused(8.0), at(10, 0.9), Reason.COOLDOWN, P, 0, 0.0),
    ("load-memory", replace(paused(0.0), hurt_utilization=0.6, hurt_at_s=5.0), at(10, 0.9, util=0.55),
     Reason.LOAD_MEMORY, P, 0, 0.0),
    ("load-memory-is-a-ceiling-while-running", running(hurt_utilization=0.6, hurt_at_s=5.0), at(10, 0.9, util=0.55),
     Reason.LOAD_CEILING, P, 0, 0.0),
    ("load-memory-caps-the-resume", replace(paused(0.0), hurt_utilization=0.6, hurt_at_s=5.0, hurt_rows_per_s=400.0),
     at(10, 0.9, util=0.55), Reason.RESUME, Level.THROTTLE, 1, 200.0),
    ("load-memory-caps-a-running-job", running(1000.0, 1, hurt_utilization=0.6, hurt_at_s=5.0, hurt_rows_per_s=1000.0),
     at(10, 0.9, util=0.55), Reason.LOAD_MEMORY, Level.THROTTLE, 1, 500.0),
    ("load-memory-holds-growth-at-the-cap", running(500.0, 1, ample_since_s=0.0, hurt_utilization=0.6, hurt_at_s=5.0,
                                                    hurt_rows_per_s=1000.0),
     at(10, 0.5, util=0.55), Reason.LOAD_MEMORY, Level.THROTTLE, 1, 500.0),
    ("load-memory-below-its-margin-grows", running(500.0, 1, ample_since_s=0.0, hurt_utilization=0.6, hurt_at_s=5.0,
                                                   hurt_rows_per_s=1000.0),
     at(10, 0.5, util=0.3), Reason.GROW, Level.THROTTLE, 1, 750.0),
    ("load-memory-cap-under-the-floor-bans", replace(paused(0.0), hurt_utilization=0.6, hurt_at_s=5.0, hurt_rows_per_s=80.0),
     at(10, 0.9, util=0.55), Reason.LOAD_MEMORY, P, 0, 0.0),
    ("load-memory-forgotten", replace(paused(0.0), hurt_utilization=0.6, hurt_at_s=5.0), at(700, 0.9, util=0.55),
     Reason.RESUME, Level.THROTTLE, 1, 250.0),
    ("hysteresis-latency", paused(0.0), at(10, 0.29), Reason.HYSTERESIS, P, 0, 0.0),
    ("hysteresis-util-tighter", paused(0.0), at(10, 0.9, util=0.8), Reason.HYSTERESIS, P, 0, 0.0),
    ("resume-util-inside-its-own-band", paused(0.0), at(10, 0.9, util=0.7), Reason.RESUME, Level.THROTTLE, 1, 250.0),
    ("resume", paused(0.0), at(10, 0.5), Reason.RESUME, Level.THROTTLE, 1, 250.0),
    ("resume-first-tick", LawState(), at(0, 0.3), Reason.RESUME, Level.THROTTLE, 1, 250.0),
    ("resume-util-only", paused(0.0), at(10, None, util=0.1), Reason.RESUME, Level.THROTTLE, 1, 250.0),
    ("resume-idle", paused(0.0), Sample(time_s=10.0, rps=0.0), Reason.RESUME, Level.THROTTLE, 1, 250.0),
    ("hysteresis-queue", paused(0.0), at(10, 0.9, in_flight=15.0), Reason.HYSTERESIS, P, 0, 0.0),
    ("slack-low", running(1000.0, 3), at(10, 0.05), Reason.SLACK_LOW, Level.THROTTLE, 1, 500.0),
    ("slack-low-4-workers", running(1000.0, 4), at(10, 0.05), Reason.SLACK_LOW, Level.THROTTLE, 2, 500.0),
    ("slack-low-zero-slack", running(1000.0, 2), at(10, 0.0), Reason.SLACK_LOW, Level.THROTTLE, 1, 500.0),
    ("slack-low-at-floor", running(50.0, 1), at(10, 0.05), Reason.SLACK_LOW, Level.THROTTLE, 1, 50.0),
    ("slack-low-util", running(1000.0, 2), at(10, 0.9, util=0.80), Reason.SLACK_LOW, Level.THROTTLE, 1, 500.0),
    ("slack-low-queue", running(1000.0, 2), at(10, 0.9, in_flight=19.0), Reason.SLACK_LOW, Level.THROTTLE, 1, 500.0),
    ("hold-moderate", running(500.0, 1), at(10, 0.2), Reason.HOLD, Level.THROTTLE, 1, 500.0),
    ("hold-moderate-at-shrink-edge", running(500.0, 1), at(10, 0.10), Reason.HOLD, Level.THROTTLE, 1, 500.0),
    ("hold-ample-too-short", running(500.0, 1, ample_since_s=9.0, last_grow_s=0.0), at(10, 0.5),
     Reason.HOLD, Level.THROTTLE, 1, 500.0),
    ("hold-since-last-grow", running(500.0, 1, ample_since_s=0.0, last_grow_s=9.0), at(10, 0.5),
     Reason.HOLD, Level.THROTTLE, 1, 500.0),
    ("grow-rows", running(250.0, 1, ample_since_s=0.0, last_grow_s=0.0), at(2, 0.5), Reason.GROW, Level.THROTTLE, 1, 500.0),
    ("grow-rows-clamped", running(900.0, 1, ample_since_s=0.0), at(5, 0.5), Reason.GROW, Level.RUN, 1, 1000.0),
    ("grow-worker", running(1000.0, 1, ample_since_s=0.0), at(5, 0.5), Reason.GROW, Level.RUN, 2, 1000.0),
    ("at-max", running(1000.0, 3, ample_since_s=0.0), at(5, 0.5), Reason.AT_MAX, Level.RUN, 3, 1000.0),
]


@pytest.mark.parametrize("state, sample, reason, level, workers, rows", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_tick(state, sample, reason, level, workers, rows):
    new, d = decide(state, sample, CFG)
    assert (d.reason, d.level, d.workers, d.rows_per_s) == (reason, level, workers, pytest.approx(rows))
    assert (new.level, new.workers, new.rows_per_s) == (level, workers, pytest.approx(rows))


def test_every_reason_but_manual_is_in_the_table():
    # MANUAL_PAUSE, WINDOW_END and PRIORITY come from the governor and runtime.control.shares, not from the law;
    # IMPACT and MEASURING need impact_max_ratio (tests/unit/test_law_impact.py)
    assert {c[3] for c in CASES} == set(Reason) - {Reason.MANUAL_PAUSE, Reason.WINDOW_END, Reason.PRIORITY,
                                                   Reason.IMPACT, Reason.MEASURING}


@pytest.mark.parametrize("staleness_s, util, p99_ms, paused_", [
    (5.0, None, 10.0, False),  # exactly at the bound is still fresh
    (5.0001, None, 10.0, True),
    (0.0, 0.85, None, False),  # exactly at the ceiling is allowed
    (0.0, 0.8501, None, True),
    (0.0, None, SLO_MS, False),  # zero slack is not a violation
    (0.0, None, SLO_MS + 1e-9, True),
], ids=["stale-at-bound", "stale-past-bound", "util-at-ceiling", "util-past-ceiling", "p99-at-slo", "p99-past-slo"])
def test_pause_boundaries(staleness_s, util, p99_ms, paused_):
    _, d = decide(running(), Sample(time_s=1.0, p99_ms=p99_ms, utilization=util, staleness_s=staleness_s), CFG)
    assert (d.level is Level.PAUSE) == paused_


def test_pause_records_time_and_clears_memory():
    state = running(1000.0, 3, ample_since_s=1.0, last_grow_s=2.0)
    new, d = decide(state, at(7.5, -0.2), CFG)
    assert new == LawState(level=Level.PAUSE, workers=0, rows_per_s=0.0, paused_at_s=7.5, steady_since_s=7.5,
                           paused_for=Reason.SLO_VIOLATED,
                           loads=((7.5, 10.0, None),))  # the reading's load is kept (a resume is judged on seconds of them)
    assert d.slack == pytest.approx(-0.2)


def test_slack_of():
    assert slack_of(at(0, 0.25), CFG) == pytest.approx(0.25)
    assert slack_of(Sample(time_s=0, p99_ms=200.0), CFG) == pytest.approx(-1.0)
    assert slack_of(Sample(time_s=0), CFG) is None
    assert slack_of(Sample(time_s=0, p99_ms=math.nan), CFG) is None


def test_floor_default_and_explicit():
    assert LawConfig(slo_p99_ms=1, max_rows_per_s=400).floor_rows_per_s == pytest.approx(20.0)
    assert LawConfig(slo_p99_ms=1, max_rows_per_s=400, min_rows_per_s=7).floor_rows_per_s == 7


def test_resume_never_below_floor():
    cfg = replace(CFG, resume_fraction=0.01, min_rows_per_s=100.0)
    _, d = decide(paused(0.0), at(10, 0.9, cfg=cfg), cfg)
    assert (d.reason, d.rows_per_s, d.workers) == (Reason.RESUME, 100.0, 1)


def test_resume_at_full_rate_is_run():
    cfg = replace(CFG, resume_fraction=1.0)
    _, d = decide(paused(0.0), at(10, 0.9, cfg=cfg), cfg)
    assert (d.reason, d.level, d.rows_per_s) == (Reason.RESUME, Level.RUN, 1000.0)


def test_directive_as_dict():
    _, d = decide(paused(0.0), at(10, 0.5), CFG)
    assert d.as_dict() == {"level": "THROTTLE", "workers": 1, "rows_per_s": 250.0, "reason": "RESUME",
                           "slack": pytest.approx(0.5)}


# --- scenarios ----------------------------------------------------------------------------------

def test_start_paused_resume_then_additive_growth_to_the_budget():
    """Ample slack every second: resume at 25 %, +25 % of max per hold-down, then +1 worker, then AT_MAX."""
    state, ds = run_script(LawState(), [at(t, 0.6) for t in range(0, 20)])
    got = [(t, d.reason, d.workers, d.rows_per_s) for t, d in enumerate(ds)]
    assert got[0] == (0, Reason.RESUME, 1, 250.0)
    grows = [(t, w, r) for t, reason, w, r in got if reason is Reason.GROW]
    assert grows == [(3, 1, 500.0), (5, 1, 750.0), (7, 1, 1000.0), (9, 2, 1000.0), (11, 3, 1000.0)]
    assert all(reason is Reason.HOLD for t, reason, _, _ in got if t in (1, 2, 4, 6, 8, 10, 12))
    assert all(reason is Reason.AT_MAX for t, reason, _, _ in got if t >= 13)  # budget reached, after a hold-down
    assert state.level is Level.RUN and (state.workers, state.rows_per_s) == (3, 1000.0)
    # THROTTLE until full rate; RUN from then on.
    assert [d.level for d in ds[:7]] == [Level.THROTTLE] * 7 and all(d.level is Level.RUN for d in ds[7:])


def test_growth_steps_are_never_closer_than_holddown():
    _, ds = run_script(LawState(), [at(t * 0.25, 0.6) for t in range(0, 80)])
    grow_times = [i * 0.25 for i, d in enumerate(ds) if d.reason is Reason.GROW]
    assert len(grow_times) == 5
    assert all(b - a >= CFG.holddown_s for a, b in zip(grow_times, grow_times[1:]))


def test_moderate_slack_interrupts_the_holddown():
    state = running(250.0, 1, last_grow_s=0.0)
    script = [at(1, 0.6), at(2, 0.6), at(2.5, 0.2), at(3, 0.6), at(4, 0.6), at(5, 0.6)]
    _, ds = run_script(state, script)
    assert [d.reason for d in ds] == [Reason.HOLD, Reason.HOLD, Reason.HOLD, Reason.HOLD, Reason.HOLD, Reason.GROW]


def test_spike_pauses_at_once_then_cooldown_then_hysteresis_then_resume():
    state = running(1000.0, 3, ample_since_s=0.0, last_grow_s=0.0)
    script = [
        at(10.0, -0.5),  # spike
        at(10.5, 0.9), at(12.9, 0.9),  # cool-down, however good it looks
        at(13.0, 0.05), at(14.0, 0.29), at(15.0, 0.0),  # cool-down over, slack positive but not ample
        at(16.0, 0.31),  # ample: resume
    ]
    state, ds = run_script(state, script)
    assert [d.reason for d in ds] == [Reason.SLO_VIOLATED, Reason.COOLDOWN, Reason.COOLDOWN,
                                      Reason.HYSTERESIS, Reason.HYSTERESIS, Reason.HYSTERESIS, Reason.RESUME]
    assert all(d.level is Level.PAUSE and d.workers == 0 and d.rows_per_s == 0 for d in ds[:-1])
    assert (ds[-1].workers, ds[-1].rows_per_s) == (1, 250.0)


def test_one_low_reading_on_a_climb_does_not_bring_the_job_back_below_the_ceiling():
    """Logged in a full benchmark run (ceiling 0.5): 121, 111, 100 req/s, then 157. The 100 alone sat in the
    resume band (0.9 x the ceiling); the law judges a resume on the last seconds' median as well."""
    cfg = replace(CFG, max_utilization=0.5)
    script = [at(50.0, 0.9, util=0.53),  # over the ceiling: out
              at(51.0, 0.9, util=0.48), at(52.0, 0.9, util=0.47),  # in the cool-down
              at(54.0, 0.9, util=0.43),  # one reading under 0.45, the last seconds' median 0.475: stay out
              at(55.0, 0.9, util=0.40)]  # the load falls: median 0.45, back
    _, ds = run_script(running(), script, cfg)
    assert [d.reason for d in ds] == [Reason.LOAD_CEILING, Reason.COOLDOWN, Reason.COOLDOWN, Reason.HYSTERESIS,
                                      Reason.RESUME]


def test_after_a_resume_a_serving_load_inside_the_resume_band_lets_the_job_grow():
    """A load (requests against capacity) does not move with the job: within the resume band (0.9 x the
    ceiling) the job grows on latency slack, where a load slack under 0.30 kept it at its resume rate
    through a day's decline (full benchmark run, ceiling 0.5: resumed at 0.45, held until 0.35)."""
    cfg = replace(CFG, max_utilization=0.5)
    state, ds = run_script(LawState(), [at(t, 0.6, util=0.42) for t in range(8)], cfg)
    assert ds[0].reason is Reason.RESUME and [d.rows_per_s for d in ds if d.reason is Reason.GROW] == [500.0, 750.0, 1000.0]
    # above the band (still under the ceiling): no growth
    _, ds = run_script(LawState(), [at(t, 0.6, util=0.46) for t in range(8)], cfg)
    assert {d.reason for d in ds} == {Reason.HYSTERESIS}
    _, ds = run_script(running(250.0, last_grow_s=0.0), [at(t, 0.6, util=0.44) for t in range(1, 3)]
                       + [at(t, 0.6, util=0.46) for t in range(3, 9)], cfg)
    above = {d.reason for d in ds[2:]}
    assert Reason.GROW not in above and Reason.SLACK_LOW in above  # above the band it shrinks (slack 0.08)


def test_a_busy_fraction_without_a_request_rate_stays_a_slack_for_growth():
    """Host CPU counts the job's own use: growing until 0.9 of the ceiling would fill the host with it."""
    cfg = replace(CFG, max_utilization=0.5)
    busy = [Sample(time_s=t, utilization=0.42) for t in range(8)]
    _, ds = run_script(running(250.0, last_grow_s=0.0), busy, cfg)
    assert {d.reason for d in ds} == {Reason.HOLD}  # slack (0.5 - 0.42) / 0.5 = 0.16: hold, neither grow nor shrink


def test_one_high_load_reading_does_not_shrink_the_job_but_the_seconds_median_does():
    """One reading moves +-50 % with Ray's refresh; a shrink is judged on the last seconds' median. The
    ceiling's pause still acts on a single reading."""
    cfg = replace(CFG, max_utilization=0.5)
    steady = [at(t, 0.6, util=0.40) for t in range(1, 4)]
    _, ds = run_script(running(), steady + [at(4.0, 0.6, util=0.48)], cfg)  # median 0.40: slack 0.2
    assert ds[-1].reason is not Reason.SLACK_LOW and ds[-1].rows_per_s == 1000.0
    _, ds = run_script(running(), steady + [at(t, 0.6, util=0.48) for t in (4.0, 5.0, 6.0, 7.0)], cfg)
    assert Reason.SLACK_LOW in {d.reason for d in ds}  # the median rises to 0.48: slack 0.04
    _, ds = run_script(running(), steady + [at(4.0, 0.6, util=0.52)], cfg)
    assert ds[-1].reason is Reason.LOAD_CEILING


def test_each_violation_restarts_the_cooldown():
    script = [at(0.0, -0.1), at(2.0, 0.9), at(2.5, -0.1), at(4.0, 0.9), at(5.4, 0.9), at(5.5, 0.9)]
    _, ds = run_script(running(), script)
    assert [d.reason for d in ds] == [Reason.SLO_VIOLATED, Reason.COOLDOWN, Reason.SLO_VIOLATED,
                                      Reason.COOLDOWN, Reason.COOLDOWN, Reason.RESUME]


def test_small_slack_shrinks_multiplicatively_to_the_floor_and_never_below():
    _, ds = run_script(running(1000.0, 3), [at(t, 0.05) for t in range(10)])
    assert [d.rows_per_s for d in ds] == [500.0, 250.0, 125.0, 62.5, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0]
    assert all(d.reason is Reason.SLACK_LOW and d.level is Level.THROTTLE for d in ds)
    assert all(d.workers == 1 for d in ds)


@pytest.mark.parametrize("shrink_factor, workers, expected", [
    (0.5, 16, [8, 4, 2, 1, 1, 1]),
    (0.5, 3, [1, 1, 1, 1, 1, 1]),
    (0.3, 16, [4, 1, 1, 1, 1, 1]),
    (0.3, 2, [1, 1, 1, 1, 1, 1]),  # floor(0.6) would be 0
    (0.1, 5, [1, 1, 1, 1, 1, 1]),
], ids=["halve-16", "halve-3", "third-16", "third-2", "tenth-5"])
def test_workers_shrink_but_never_below_one_while_running(shrink_factor, workers, expected):
    cfg = replace(CFG, max_workers=16, shrink_factor=shrink_factor)
    state = LawState(level=Level.RUN, workers=workers, rows_per_s=1000.0)
    _, ds = run_script(state, [at(t, 0.01, cfg=cfg) for t in range(6)], cfg)
    assert [d.workers for d in ds] == expected
    assert all(d.level is Level.THROTTLE and d.rows_per_s >= cfg.floor_rows_per_s for d in ds)


def test_shrink_resets_ample_and_growth_waits_a_full_holddown():
    state = running(1000.0, 2, ample_since_s=0.0, last_grow_s=0.0)
    _, ds = run_script(state, [at(10, 0.05), at(11, 0.6), at(12, 0.6), at(13, 0.6)])
    assert [d.reason for d in ds] == [Reason.SLACK_LOW, Reason.HOLD, Reason.HOLD, Reason.GROW]
    assert (ds[-1].rows_per_s, ds[-1].workers) == (750.0, 1)


def test_never_flaps_on_small_oscillating_slack():
    """Slack alternating 0.05 / 0.2 each tick is never a reason to pause, and never to grow."""
    state, _ = run_script(LawState(), [at(t, 0.6) for t in range(12)])
    assert state.level is Level.RUN
    _, ds = run_script(state, [at(12 + 0.25 * i, 0.05 if i % 2 == 0 else 0.2) for i in range(400)])
    assert not any(d.level is Level.PAUSE for d in ds)
    assert {d.reason for d in ds} == {Reason.SLACK_LOW, Reason.HOLD}
    assert all(d.workers >= 1 and d.rows_per_s >= CFG.floor_rows_per_s for d in ds)
    assert ds[-1].rows_per_s == CFG.floor_rows_per_s and ds[-1].workers == 1


@pytest.mark.parametrize("low, high", [(-0.05, 0.5), (-0.05, 0.2), (-1.0, 0.99)], ids=["violate-ample", "violate-moderate", "extreme"])
def test_never_flaps_across_the_slo(low, high):
    """Slack crossing zero every tick: every violation restarts the cool-down, so the job stays paused."""
    state, _ = run_script(LawState(), [at(t, 0.6) for t in range(12)])
    _, ds = run_script(state, [at(12 + 0.5 * i, low if i % 2 == 0 else high) for i in range(200)])
    assert all(d.level is Level.PAUSE for d in ds)
    assert not any(d.reason is Reason.RESUME for d in ds)


# --- properties ---------------------------------------------------------------------------------

maybe_p99 = st.one_of(st.none(), st.floats(0.0, 400.0))
maybe_util = st.one_of(st.none(), st.floats(0.0, 1.2))
samples_st = st.lists(
    st.tuples(st.floats(0.0, 3.0), maybe_p99, maybe_util, st.floats(0.0, 10.0),
              st.sampled_from([None, None, None, None, "down"])),
    min_size=1, max_size=60)
cfg_st = st.builds(
    LawConfig, slo_p99_ms=st.floats(1.0, 200.0), max_workers=st.integers(1, 8),
    max_rows_per_s=st.floats(1.0, 1e5), shrink_factor=st.floats(0.1, 0.9),
    grow_step_fraction=st.floats(0.01, 1.0), resume_fraction=st.floats(0.0, 1.0),
    holddown_s=st.floats(0.0, 5.0), cooldown_s=st.floats(0.0, 5.0),
    impact_max_ratio=st.one_of(st.none(), st.floats(1.0, 2.0)), impact_every_s=st.floats(1.0, 60.0),
    impact_pause_s=st.floats(0.0, 8.0), impact_settle_s=st.floats(0.0, 4.0), impact_window_s=st.floats(0.5, 10.0),
    impact_confidence=st.floats(0.5, 0.99), impact_noise=st.floats(0.0, 1.0))


def _as_samples(raw) -> list[Sample]:
    t, out = 0.0, []
    for dt, p99, util, stale, err in raw:
        t += dt
        out.append(Sample(time_s=t, p99_ms=p99, utilization=util, staleness_s=stale, error=err))
    return out


@settings(max_examples=300, deadline=None)
@given(cfg=cfg_st, raw=samples_st)
def test_invariants_hold_for_any_sample_sequence(cfg, raw):
    state = LawState()
    last_law_pause_s = None
    for s in _as_samples(raw):
        was_paused = state.level is Level.PAUSE
        state, d = decide(state, s, cfg)
        assert 0.0 <= d.rows_per_s <= cfg.max_rows_per_s
        assert 0 <= d.workers <= cfg.max_workers
        assert (d.level is Level.PAUSE) == (d.workers == 0 and d.rows_per_s == 0.0)
        assert (state.level, state.workers, state.rows_per_s) == (d.level, d.workers, d.rows_per_s)
        if d.level is not Level.PAUSE:
            assert d.workers >= 1 and d.rows_per_s >= min(cfg.floor_rows_per_s, cfg.max_rows_per_s)
        if s.error is not None:
            assert (d.level, d.reason) == (Level.PAUSE, Reason.TELEMETRY_MISSING)
        # every pause restarts the cool-down, but telemetry lost while already out (no evidence of harm)
        if d.reason in LAW_PAUSES and not (was_paused and d.reason in (Reason.TELEMETRY_MISSING, Reason.TELEMETRY_STALE)):
            last_law_pause_s = s.time_s
        if d.reason is Reason.RESUME and last_law_pause_s is not None:
            assert s.time_s - last_law_pause_s >= cfg.cooldown_s


# --- bugs ---------------------------------------------------------------------------------------

def test_nan_utilization_without_latency_is_no_telemetry():
    _, d = decide(LawState(), Sample(time_s=0.0, utilization=math.nan), CFG)
    assert d.level is Level.PAUSE


def test_infinite_p99_is_an_slo_violation():
    _, d = decide(running(), Sample(time_s=0.0, p99_ms=math.inf, utilization=0.1), CFG)
    assert (d.level, d.reason) == (Level.PAUSE, Reason.SLO_VIOLATED)


def test_nan_staleness_is_stale():
    _, d = decide(running(), at(0.0, 0.9, staleness_s=math.nan), CFG)
    assert d.level is Level.PAUSE


def test_the_learning_clock_starts_when_a_worker_reports_trained_rows():
    """The governor holds the law's clock at now until a worker reports rows trained after the resume: a
    worker whose cold start outlasts ``load_learn_after_s`` (a busy host) and hurts serving on its own
    teaches no load; once it has trained, a violation 3 s on does."""
    from types import SimpleNamespace

    from runtime.control.governor import _training_clock

    state, d = decide(paused(0.0), at(10, 0.5, util=0.3), CFG)
    assert d.reason is Reason.RESUME
    job = SimpleNamespace(progress={0: {"rows": 500, "t": 9.0}})  # a report from before the pause: not this run
    cold, d = decide(_training_clock(state, [job], 15.0), at(15, -0.2, util=0.3), CFG)  # 5 s, no step yet
    assert d.reason is Reason.SLO_VIOLATED and cold.hurt_utilization is None
    job.progress[0] = {"rows": 0, "t": 11.0}  # a report with nothing trained yet
    assert _training_clock(state, [job], 15.0).running_since_s == 15.0
    job.progress[0] = {"rows": 256, "t": 11.0}  # trained from 11 s
    warm, d = decide(_training_clock(state, [job], 15.0), at(15, -0.2, util=0.3), CFG)
    assert d.reason is Reason.SLO_VIOLATED and warm.hurt_utilization == 0.3
    assert _training_clock(paused(3.0), [job], 15.0) == paused(3.0)  # paused: nothing to move
