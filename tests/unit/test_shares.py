"""Pooling the law's budget across jobs and dividing it by priority (pure; no Ray)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.control.law import Directive, LawConfig, LawState, Level, Reason, decide
from runtime.control.sample import Sample
from runtime.control.shares import Claim, Share, clamp_state, divide, job_directive, pooled_config


def claim(job, priority=0, workers=2, rows=100.0, floor=0.0):
    return Claim(job, priority, workers, rows, floor)


def test_higher_priority_takes_workers_first():
    shares = divide(2, 200.0, [claim("low", 0), claim("high", 5)])
    assert shares["high"] == Share(2, 100.0)
    assert shares["low"] == Share(0, 0.0)


def test_lower_priority_gets_what_the_higher_cannot_use():
    shares = divide(3, 250.0, [claim("low", 0, workers=2), claim("high", 5, workers=1)])
    assert shares["high"].workers == 1 and shares["low"].workers == 2
    assert shares["high"].rows_per_s == 100.0  # capped at its own budget
    assert shares["low"].rows_per_s == 100.0  # the rest, capped at its budget too (50 rows/s unused)


def test_equal_priorities_share_one_worker_each_in_turn():
    shares = divide(3, 300.0, [claim("a"), claim("b"), claim("c")])
    assert [shares[j].workers for j in "abc"] == [1, 1, 1]
    assert [shares[j].rows_per_s for j in "abc"] == [100.0, 100.0, 100.0]
    odd = divide(3, 120.0, [claim("a"), claim("b")])
    assert (odd["a"].workers, odd["b"].workers) == (2, 1)  # the earlier-registered job gets the odd worker
    assert odd["a"].rows_per_s == 80.0 and odd["b"].rows_per_s == 40.0  # rows follow workers


def test_shrinking_headroom_takes_from_the_lowest_priority_first():
    claims = [claim("low", 0, workers=1), claim("mid", 3, workers=1), claim("high", 9, workers=1)]
    assert [divide(w, 300.0, claims)[j].workers for w in (3, 2, 1, 0) for j in ("low", "mid", "high")] == [
        1, 1, 1,
        0, 1, 1,
        0, 0, 1,
        0, 0, 0]


def test_every_job_with_a_worker_gets_its_floor_rate():
    shares = divide(2, 100.0, [claim("high", 5, workers=1, rows=100.0), claim("low", 0, workers=1, rows=100.0, floor=5.0)])
    assert shares["high"].rows_per_s == 100.0
    assert shares["low"] == Share(1, 5.0)


@settings(deadline=None)  # a host that stalls one example is no failure
@given(st.integers(0, 12), st.floats(0, 5000),
       st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4), st.floats(1, 1000)), min_size=1, max_size=6))
def test_division_never_exceeds_the_budget_or_a_job_s_limits(workers, rows, raw):
    claims = [Claim(f"j{i}", p, w, r) for i, (p, w, r) in enumerate(raw)]
    shares = divide(workers, rows, claims)
    assert sum(s.workers for s in shares.values()) == min(workers, sum(c.max_workers for c in claims))
    assert sum(s.rows_per_s for s in shares.values()) <= rows + 1e-6
    for c in claims:
        s = shares[c.job]
        assert 0 <= s.workers <= c.max_workers and 0 <= s.rows_per_s <= c.max_rows_per_s + 1e-6
        assert s.workers or s.rows_per_s == 0  # no rows without a worker
        higher_waits = any(shares[o.job].workers < o.max_workers for o in claims if o.priority > c.priority)
        assert not (s.workers and higher_waits), "a lower priority holds a worker a higher one still wants"


def test_pooled_config_is_as_cautious_as_the_most_cautious_job():
    a = LawConfig(slo_p99_ms=100, max_workers=2, max_rows_per_s=500, max_utilization=0.9, cooldown_s=1, holddown_s=4)
    b = LawConfig(slo_p99_ms=60, max_workers=3, max_rows_per_s=200, max_utilization=0.7, cooldown_s=5, holddown_s=1)
    cfg = pooled_config([a, b], pool_slots=4)
    assert (cfg.slo_p99_ms, cfg.max_utilization, cfg.cooldown_s, cfg.holddown_s) == (60, 0.7, 5, 4)
    assert (cfg.max_workers, cfg.max_rows_per_s) == (4, 700)  # 5 wanted, 4 slots in the pool
    assert pooled_config([a, b]).max_workers == 5  # pool size unknown: no cap
    assert pooled_config([a], pool_slots=0).max_workers == 1  # the law always has room for one
    assert cfg.floor_rows_per_s == min(a.floor_rows_per_s, b.floor_rows_per_s)
    assert cfg.impact_max_ratio is None  # no job asked for an impact guard
    assert pooled_config([a, replace(b, calm_read_s=0.0)]).calm_read_s == 0.0  # one job wants every refresh: all get it


def test_pooled_impact_guard_is_the_tightest_asked_for():
    a = LawConfig(slo_p99_ms=100, impact_max_ratio=1.2, impact_every_s=40, impact_pause_s=4, impact_confidence=0.7,
                  impact_noise=0.2)
    b = LawConfig(slo_p99_ms=100, impact_confidence=0.6)  # no guard of its own: the other jobs' still covers the cluster
    c = LawConfig(slo_p99_ms=100, impact_max_ratio=1.1, impact_every_s=60, impact_pause_s=6, impact_confidence=0.95,
                  impact_noise=0.05)
    for laws in ([a, b, c], [b, c, a]):
        cfg = pooled_config(laws)
        assert (cfg.impact_max_ratio, cfg.impact_every_s, cfg.impact_pause_s, cfg.impact_confidence,
                cfg.impact_noise) == (1.1, 40, 6, 0.7, 0.05)


def test_a_single_job_gets_exactly_what_the_law_decides():
    """One job alone: pooling and dividing change nothing."""
    law = LawConfig(slo_p99_ms=50, max_workers=2, max_rows_per_s=1000, holddown_s=0.5, cooldown_s=1)
    cfg = pooled_config([law], pool_slots=2)
    state, before = LawState(), Level.PAUSE
    for t, p99 in enumerate([10] * 12 + [45] + [80] + [10] * 10):
        state, pooled = decide(clamp_state(state, cfg), Sample(time_s=t, p99_ms=p99, rps=5), cfg)
        share = divide(pooled.workers, pooled.rows_per_s, [Claim("j", 0, 2, 1000, law.floor_rows_per_s)])["j"]
        d = job_directive(pooled, share, law, before)
        assert (d.level, d.workers, d.rows_per_s, d.reason) == (pooled.level, pooled.workers, pooled.rows_per_s, pooled.reason)
        before = d.level


def test_job_directive_reasons():
    law = LawConfig(slo_p99_ms=50, max_rows_per_s=100)
    running = Directive(Level.RUN, 2, 200.0, Reason.GROW, 0.5)
    assert job_directive(running, Share(0, 0.0), law, Level.RUN) == Directive(Level.PAUSE, 0, 0.0, Reason.PRIORITY, 0.5)
    assert job_directive(running, Share(1, 100.0), law, Level.PAUSE).reason is Reason.RESUME  # back from a priority pause
    assert job_directive(running, Share(1, 40.0), law, Level.RUN).level is Level.THROTTLE  # under its own maximum
    paused = Directive(Level.PAUSE, 0, 0.0, Reason.SLO_VIOLATED, -0.2)
    assert job_directive(paused, Share(0, 0.0), law, Level.RUN).reason is Reason.SLO_VIOLATED


def test_clamp_state_forgets_budget_that_left_with_a_job():
    state = LawState(level=Level.RUN, workers=4, rows_per_s=800.0)
    cfg = LawConfig(slo_p99_ms=50, max_workers=2, max_rows_per_s=300)
    assert (clamp_state(state, cfg).workers, clamp_state(state, cfg).rows_per_s) == (2, 300.0)
