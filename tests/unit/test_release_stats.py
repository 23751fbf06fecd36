"""Router records -> observations and the rollout report (pure: no Ray, no MLflow)."""

from __future__ import annotations

import pytest

from runtime.release.gates import Phase
from runtime.release.stats import labels_by_request, mirrored_pairs, observe, phase_summary, role_stats
from runtime.release.report import write_report
from runtime.spec.release import ReleaseSpec


def rec(seq, served_by, *, champion=None, challenger=None, mirrored=False, t=0.0, rid=None, phase="shadow"):
    """A router record; ``champion``/``challenger`` are ``(latency_ms, predictions or None for a failure)``."""
    r = {"seq": seq, "t": t, "request_id": rid or f"r{seq}", "served_by": served_by, "mirrored": mirrored,
         "latency_ms": {}, "ok": {}, "predictions": {}, "phase": phase}
    for role, part in (("champion", champion), ("challenger", challenger)):
        if part is not None:
            r["latency_ms"][role], r["predictions"][role] = part[0], part[1]
            r["ok"][role] = part[1] is not None
    return r


SHADOW = [
    rec(0, "champion", champion=(2.0, [1.0, 2.0]), challenger=(3.0, [1.1, 2.5]), mirrored=True, t=0.0),
    rec(1, "champion", champion=(4.0, [3.0]), t=0.5),
    rec(2, "champion", champion=(6.0, [0.0]), challenger=(9.0, None), mirrored=True, t=1.0),  # mirror failed
    rec(3, "champion", champion=(8.0, [5.0, 6.0]), challenger=(5.0, [5.0, 6.0]), mirrored=True, t=1.5),
]


def test_role_stats_split_served_from_mirrored_calls():
    champ = role_stats(SHADOW, "champion")
    assert champ.requests == 4 and champ.errors == 0 and champ.p50_ms == pytest.approx(5.0)
    assert role_stats(SHADOW, "challenger").requests == 0  # it served nothing
    mirrored = role_stats(SHADOW, "challenger", served_only=False)
    assert mirrored.requests == 3 and mirrored.errors == 1 and mirrored.p50_ms == pytest.approx(4.0)


def test_shadow_observation_pairs_mirrored_predictions_and_scores_both_on_the_same_labelled_rows():
    labels = labels_by_request([{"seq": 9, "request_id": "r0", "labels": [1.0, 2.0]},
                                {"seq": 10, "request_id": "r3", "labels": [5.0, 6.0]},
                                {"seq": 11, "request_id": "r1", "labels": [3.0]}])  # r1 was not mirrored
    assert mirrored_pairs(SHADOW) == [(1.0, 1.1), (2.0, 2.5), (5.0, 5.0), (6.0, 6.0)]
    obs = observe(Phase.SHADOW, SHADOW, labels, metric="neg_mae", tolerance=0.2)
    assert obs.pairs == 4 and obs.agreement == pytest.approx(0.75)
    assert obs.labelled == 4
    assert obs.metric_champion == pytest.approx(0.0)
    assert obs.metric_challenger == pytest.approx(-(0.1 + 0.5) / 4)
    assert obs.challenger.errors == 1 and obs.drift is not None


def test_stage_observation_judges_served_requests_and_drift_against_the_shadow_baseline():
    stage = [rec(10, "challenger", challenger=(5.0, [10.0, 11.0])), rec(11, "champion", champion=(3.0, [1.0])),
             rec(12, "challenger", challenger=(7.0, None))]
    obs = observe(Phase.STAGE, stage, {}, metric="r2", tolerance=0.1, baseline_predictions=[1.0, 2.0, 3.0])
    assert obs.challenger.requests == 2 and obs.challenger.errors == 1 and obs.challenger.error_rate == 0.5
    assert obs.champion.requests == 1
    assert obs.drift == 1.0  # every challenger prediction lies above every baseline one
    assert obs.agreement is None and obs.metric_champion is None


def test_report_has_the_outcome_phases_decisions_and_both_plots(tmp_path):
    plan = ReleaseSpec()
    obs = observe(Phase.SHADOW, SHADOW, {}, metric="r2", tolerance=0.2)
    stage = [rec(10 + i, "challenger", challenger=(400.0, [1.0]), t=2.0 + i, phase="stage 1 (5 %)") for i in range(3)]
    result = {"model": "m", "challenger": 2, "champion_before": 1, "champion_after": 1, "previous_champion": None,
              "outcome": "rolled_back", "reason": "p99_breach", "detail": "challenger p99 400.0 ms > 15.0 ms",
              "duration_s": 5.0, "run_id": "abc", "phases": [phase_summary("shadow", 0, obs)],
              "decisions": [{"at_s": 0.0, "action": "hold", "reason": "shadowing", "split_percent": 0, "detail": "x"},
                            {"at_s": 4.0, "action": "rollback", "reason": "p99_breach", "split_percent": 0,
                             "detail": "challenger p99 400.0 ms > 15.0 ms"}]}
    files = write_report(tmp_path, result, SHADOW + stage, plan, t0_wall_s=0.0)
    assert {f.name for f in files} == {"report.md", "latency.png", "shadow.png"}
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
    text = (tmp_path / "report.md").read_text()
    assert "**ROLLED_BACK**" in text and "p99_breach" in text and "| shadow | 0 |" in text
    assert "## Shadow test" in text and "agreement 75.0%" in text and "| p99 ms | 7.9 | 5.0 |" in text
    assert "![latency](latency.png)" in text and "![shadow](shadow.png)" in text
