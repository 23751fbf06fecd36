"""The demo's table of what users felt: phases split by the governor's directive, and the interval that
says how far a p99 ratio moves by chance alone."""

from __future__ import annotations

import numpy as np

from examples.demo import directive_spans, p99_ratio_interval, phase_table


def test_the_training_phase_splits_into_running_and_paused_spans_that_cover_it_once():
    decisions = [{"t": 10.0, "level": "THROTTLE"}, {"t": 12.0, "level": "RUN"}, {"t": 15.0, "level": "PAUSE"},
                 {"t": 16.0, "level": "PAUSE"}, {"t": 18.0, "level": "RUN"}, {"t": 30.0, "level": "PAUSE"}]
    running, paused = directive_spans(decisions, 9.0, 25.0)
    assert running == [(10.0, 15.0), (18.0, 25.0)]
    assert paused == [(9.0, 10.0), (15.0, 18.0)]  # consecutive PAUSE decisions make one span
    assert sum(b - a for a, b in running + paused) == 16.0


def test_slow_requests_while_paused_are_the_paused_rows_not_the_running_ones():
    rng = np.random.default_rng(1)
    t0, day = 0.0, 100.0
    client = [(t, 0.010 + 0.002 * rng.random()) for t in np.arange(0.0, 100.0, 0.05)]  # baseline day: ~10 ms
    client += [(t, 0.010 + 0.002 * rng.random()) for t in np.arange(100.0, 110.0, 0.05)]  # job running
    client += [(t, 0.200) for t in np.arange(110.0, 115.0, 0.05)]  # the host stalls while the job is paused
    decisions = [{"t": 100.0, "level": "RUN", "p99_ms": 11.0}, {"t": 110.0, "level": "PAUSE", "p99_ms": 200.0}]
    phases = {"baseline": [(0.0, 100.0)], "training": [(100.0, 115.0)],
              "  running": [(100.0, 110.0)], "  paused": [(110.0, 115.0)]}
    rows = {r["phase"]: r for r in phase_table(client, decisions, phases, t0, day)}
    assert rows["running"]["client_p99_vs_baseline"] < 1.1
    assert rows["paused"]["client_p99_vs_baseline"] > 10
    assert rows["training"]["client_p99_vs_baseline"] > 10  # the whole phase shows the stall ...
    assert rows["running"]["part_of"] == "training" and rows["training"]["part_of"] is None  # ... the split, where
    lo, hi = rows["running"]["ratio_90ci"]
    assert lo <= rows["running"]["client_p99_vs_baseline"] <= hi


def test_the_interval_is_wider_for_fewer_requests_and_excludes_one_for_a_real_shift():
    rng = np.random.default_rng(0)
    for n in (200, 5000):
        a, b = rng.lognormal(size=n), rng.lognormal(size=n)
        lo, hi = p99_ratio_interval(list(a), list(b))
        assert lo < np.percentile(a, 99) / np.percentile(b, 99) < hi  # around the ratio it qualifies
    few = p99_ratio_interval(list(rng.lognormal(size=200)), list(rng.lognormal(size=200)))
    many = p99_ratio_interval(list(rng.lognormal(size=5000)), list(rng.lognormal(size=5000)))
    assert few[1] - few[0] > 2 * (many[1] - many[0])
    shifted = p99_ratio_interval(list(1.5 * rng.lognormal(size=5000)), list(rng.lognormal(size=5000)))
    assert shifted[0] > 1.2
    assert p99_ratio_interval([1.0] * 10, [1.0] * 500) is None  # too few requests to say anything


def test_the_impact_summary_counts_what_the_guard_judged_while_running_and_what_it_cost():
    from examples.demo import impact_summary

    decisions = [{"t": 0.0, "level": "PAUSE", "reason": "MEASURING", "impact": None},
                 {"t": 4.0, "level": "THROTTLE", "reason": "RESUME", "impact": None},
                 {"t": 9.0, "level": "THROTTLE", "reason": "HOLD", "impact": 1.05},
                 {"t": 10.0, "level": "PAUSE", "reason": "IMPACT", "impact": 1.3},  # judged, and paused on it
                 {"t": 16.0, "level": "THROTTLE", "reason": "RESUME", "impact": None},
                 {"t": 20.0, "level": "RUN", "reason": "AT_MAX", "impact": 0.95},
                 {"t": 21.0, "level": "RUN", "reason": "AT_MAX", "impact": 0.5, "phase": "finishing"}]
    got = impact_summary(decisions)
    assert (got["readings"], got["median"], got["max"]) == (2, 1.0, 1.05)
    assert (got["measuring_s"], got["held_s"]) == (4.0, 6.0)
