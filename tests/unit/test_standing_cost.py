"""benchmarks.standing_cost's arithmetic: each phase's client quantiles from the requests sent in it
(its settling seconds left out), and running over paused per pair."""

from __future__ import annotations

import pytest

from benchmarks.standing_cost import pair_ratios, phase_latencies


def _phases():
    return [{"phase": "paused", "begin_s": 0.0, "cpu_per_s": 0.5}, {"phase": "running", "begin_s": 10.0, "cpu_per_s": 0.7},
            {"phase": "paused", "begin_s": 20.0, "cpu_per_s": 0.6}, {"phase": "running", "begin_s": 30.0, "cpu_per_s": 0.7}]


def test_each_phase_counts_the_requests_sent_after_it_settled_and_pairs_compare_running_to_paused():
    records = [(0.5, 500.0)]  # in the first phase's settling seconds: left out
    records += [(2 + i * 0.08, 10.0) for i in range(100)]  # paused: 10 ms
    records += [(10.5, 900.0)]  # the running phase's settling: left out
    records += [(12 + i * 0.08, 20.0) for i in range(100)]  # running: 20 ms
    records += [(22 + i * 0.08, 10.0) for i in range(100)] + [(32 + i * 0.08, 10.0) for i in range(100)]
    phases = _phases()
    phase_latencies(phases, records, phase_s=10.0, settle_s=2.0)

    assert [p["requests"] for p in phases] == [100, 100, 100, 100]
    assert phases[0]["p99_ms"] == 10.0 and phases[1]["p99_ms"] == 20.0
    ratios, cpu = pair_ratios(phases)
    assert ratios["p90"] == [2.0, 1.0] and ratios["p50"] == [2.0, 1.0]
    assert cpu == pytest.approx(0.15)  # median of 0.2 and 0.1


def test_a_phase_with_no_request_says_so():
    phases = _phases()
    with pytest.raises(RuntimeError, match="no request succeeded in the running phase at 10 s"):
        phase_latencies(phases, [(2.0, 10.0), (22.0, 10.0), (32.0, 10.0)], phase_s=10.0, settle_s=2.0)
