"""The release gates as pure logic: stage plan, risk budget, shadow checks, scripted rollouts tick by tick."""

from __future__ import annotations

import pytest

from runtime.errors import SpecError
from runtime.release.gates import (
    Action, LatencyStats, Observation, Phase, Reason, RolloutState, agreement, allowed_p99_ms, budget_breach,
    decide_release, feedback_metric, latency_stats, prediction_drift, start,
)
from runtime.spec.release import ReleaseSpec
from runtime.spec.job import spec_from_dict


def plan(**overrides) -> ReleaseSpec:
    raw = {"shadow": {"fraction": 0.5, "duration_s": 10, "min_agreement": 0.8},
           "stages": [{"percent": 5, "hold_s": 10}, {"percent": 25, "hold_s": 10}, {"percent": 100, "hold_s": 10}],
           "risk_budget": {"max_p99_increase_ratio": 0.5, "max_p99_increase_ms": 5, "max_error_rate": 0.05,
                           "max_prediction_drift": 0.3, "min_requests": 20, "max_wait_s": 30}}
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return ReleaseSpec.model_validate(raw)


GOOD_SHADOW = Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 25),
                          agreement=0.95, pairs=25)
GOOD_STAGE = Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 25), drift=0.1)


# --- small pieces -------------------------------------------------------------------------------------

def test_latency_stats_counts_errors_and_percentiles_from_successes():
    stats = latency_stats([float(i) for i in range(1, 101)], errors=4)
    assert stats.requests == 104 and stats.errors == 4
    assert stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.error_rate == pytest.approx(4 / 104)
    assert latency_stats([], errors=0) == LatencyStats()


@pytest.mark.parametrize("baseline, ratio, ms, expected", [
    (10.0, 0.5, 5.0, 15.0),    # the ratio allows 5 ms, the floor 5 ms
    (100.0, 0.5, 5.0, 150.0),  # the ratio dominates
    (2.0, 0.5, 5.0, 7.0),      # the ms floor dominates: a tiny baseline does not trip on noise
    (10.0, 0.0, 0.0, 10.0),    # no increase at all
])
def test_allowed_p99_is_baseline_plus_the_larger_allowance(baseline, ratio, ms, expected):
    budget = plan(risk_budget={"max_p99_increase_ratio": ratio, "max_p99_increase_ms": ms}).risk_budget
    assert allowed_p99_ms(baseline, budget) == pytest.approx(expected)


@pytest.mark.parametrize("challenger, drift, expected", [
    (latency_stats([11.0] * 40), 0.1, None),
    (latency_stats([11.0] * 40, errors=3), 0.1, Reason.ERROR_RATE_BREACH),  # 3/43 = 7 % > 5 %
    (latency_stats([11.0] * 40, errors=2), 0.1, None),                      # 2/42 = 4.8 % is within
    (latency_stats([16.0] * 40), 0.1, Reason.P99_BREACH),                   # > 10 + max(5, 5)
    (latency_stats([14.9] * 40), 0.1, None),
    (latency_stats([11.0] * 40), 0.31, Reason.DRIFT_BREACH),
    (latency_stats([16.0] * 40, errors=10), 0.9, Reason.ERROR_RATE_BREACH),  # errors are reported first
], ids=["within", "errors", "errors-edge", "p99", "p99-edge", "drift", "several"])
def test_budget_breach_names_the_first_rule_broken(challenger, drift, expected):
    obs = Observation(challenger=challenger, drift=drift)
    breach = budget_breach(obs, 10.0, plan().risk_budget)
    assert (breach[0] if breach else None) is expected
    if breach:
        assert breach[1]  # a human-readable detail


def test_drift_agreement_and_feedback_metric():
    assert prediction_drift([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert prediction_drift([10, 11, 12], [1, 2, 3]) == 1.0
    assert prediction_drift([], [1.0]) is None
    assert agreement([(1.0, 1.05), (1.0, 1.5), (2.0, 2.0), (0.0, -0.1)], tolerance=0.1) == pytest.approx(0.75)
    assert agreement([], tolerance=0.1) is None
    assert feedback_metric("r2", [1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert feedback_metric("neg_mae", [1, 2], [2, 4]) == pytest.approx(-1.5)
    assert feedback_metric("accuracy", [0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(0.75)
    assert feedback_metric("neg_log_loss", [0, 1], [0, 1]) is None
    assert feedback_metric("r2", [1.0], [1.0]) is None


# --- the spec section ---------------------------------------------------------------------------------

def _job(release=None) -> dict:
    raw = {"name": "m", "model": {"estimator": "sklearn.linear_model.SGDRegressor"},
           "data": {"path": "d", "target": "y"}, "validation": {"holdout": "h.parquet"},
           "serving": {"url": "http://127.0.0.1:1/metrics", "slo_p99_ms": 50}}
    if release is not None:
        raw["release"] = release
    return raw


def test_release_section_has_defaults_so_existing_specs_keep_working():
    spec = spec_from_dict(_job())
    assert [s.percent for s in spec.release.stages] == [5, 25, 100]
    assert spec.release.shadow.fraction == 0.2 and spec.release.risk_budget.max_error_rate == 0.01


@pytest.mark.parametrize("release, field", [
    ({"stages": [{"percent": 25, "hold_s": 1}, {"percent": 5, "hold_s": 1}, {"percent": 100, "hold_s": 1}]}, "release.stages"),
    ({"stages": [{"percent": 5, "hold_s": 1}, {"percent": 50, "hold_s": 1}]}, "release.stages"),
    ({"stages": []}, "release.stages"),
    ({"stages": [{"percent": 150, "hold_s": 1}]}, "release.stages.0.percent"),
    ({"shadow": {"fraction": 1.5}}, "release.shadow.fraction"),
    ({"risk_budget": {"max_error_rte": 0.1}}, "release.risk_budget.max_error_rte"),
], ids=["not-rising", "not-ending-at-100", "empty", "percent-over-100", "fraction-over-1", "typo"])
def test_bad_release_sections_give_one_error_naming_the_field(release, field):
    with pytest.raises(SpecError) as err:
        spec_from_dict(_job(release), source="job.yaml")
    assert str(err.value).startswith(f"job.yaml: {field}") and "fix:" in str(err.value)


# --- the decision function, phase by phase ------------------------------------------------------------

def test_start_opens_the_shadow_phase_or_skips_it():
    state, d = start(plan(), now_s=100.0)
    assert state.phase is Phase.SHADOW and d.action is Action.HOLD and d.shadow_fraction == 0.5 and d.split_percent == 0
    state, d = start(plan(shadow={"duration_s": 0}), now_s=100.0)
    assert state.phase is Phase.STAGE and state.stage_index == 0 and d.split_percent == 5 and d.shadow_fraction == 0


@pytest.mark.parametrize("obs, now_s, action, reason", [
    (GOOD_SHADOW, 5.0, Action.HOLD, Reason.SHADOWING),
    (GOOD_SHADOW, 10.0, Action.ADVANCE, Reason.SHADOW_PASSED),
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 5), agreement=1.0, pairs=5),
     12.0, Action.HOLD, Reason.INSUFFICIENT_DATA),
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 5), agreement=1.0, pairs=5),
     40.0, Action.REJECT, Reason.INSUFFICIENT_DATA),
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 25), agreement=0.5, pairs=25),
     10.0, Action.REJECT, Reason.AGREEMENT_LOW),
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 25), agreement=0.9, pairs=25,
                 metric_champion=0.9, metric_challenger=0.7, labelled=40), 10.0, Action.REJECT, Reason.METRIC_WORSE),
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 25), agreement=0.9, pairs=25,
                 metric_champion=0.9, metric_challenger=0.7, labelled=5), 10.0, Action.ADVANCE, Reason.SHADOW_PASSED),
    # a slow challenger in shadow is reported, not gated: mirrored calls never touch a response
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([900.0] * 25), agreement=0.9, pairs=25),
     10.0, Action.ADVANCE, Reason.SHADOW_PASSED),
    (Observation(champion=latency_stats([10.0] * 50), challenger=latency_stats([11.0] * 20, errors=5), agreement=1.0,
                 pairs=20), 10.0, Action.REJECT, Reason.ERROR_RATE_BREACH),
], ids=["early", "passes", "waits-for-data", "no-data-in-time", "disagrees", "worse-on-feedback",
        "too-few-labels-to-judge", "slow-mirror-not-gated", "mirrors-fail"])
def test_shadow_phase(obs, now_s, action, reason):
    state, _ = start(plan(), now_s=0.0)
    new, d = decide_release(state, obs, plan(), now_s)
    assert (d.action, d.reason) == (action, reason)
    if action is Action.ADVANCE:
        assert new.phase is Phase.STAGE and new.stage_index == 0 and new.baseline_p99_ms == pytest.approx(10.0)
        assert (d.split_percent, d.shadow_fraction) == (5, 0) and new.phase_started_s == now_s
    if action is Action.REJECT:
        assert new.phase is Phase.REJECTED and d.split_percent == 0 and d.shadow_fraction == 0


@pytest.mark.parametrize("obs, elapsed_s, action, reason", [
    (GOOD_STAGE, 5.0, Action.HOLD, Reason.HOLDING),
    (GOOD_STAGE, 10.0, Action.ADVANCE, Reason.STAGE_PASSED),
    (Observation(challenger=latency_stats([500.0] * 25), drift=0.1), 2.0, Action.ROLLBACK, Reason.P99_BREACH),
    (Observation(challenger=latency_stats([500.0] * 5), drift=0.1), 2.0, Action.HOLD, Reason.HOLDING),
    (Observation(challenger=latency_stats([11.0] * 5)), 15.0, Action.HOLD, Reason.INSUFFICIENT_DATA),
    (Observation(challenger=latency_stats([11.0] * 5)), 40.0, Action.ROLLBACK, Reason.INSUFFICIENT_DATA),
    (Observation(challenger=latency_stats([11.0] * 25), drift=0.8), 3.0, Action.ROLLBACK, Reason.DRIFT_BREACH),
], ids=["holding", "passes", "breach-mid-stage", "too-few-to-judge-yet", "waits-for-data", "no-data-in-time", "drift"])
def test_a_middle_stage(obs, elapsed_s, action, reason):
    state = RolloutState(Phase.STAGE, 1, phase_started_s=100.0, baseline_p99_ms=10.0)
    new, d = decide_release(state, obs, plan(), 100.0 + elapsed_s)
    assert (d.action, d.reason) == (action, reason)
    if action is Action.ADVANCE:
        assert new.stage_index == 2 and d.split_percent == 100 and new.phase_started_s == 100.0 + elapsed_s
    elif action is Action.HOLD:
        assert new == state and d.split_percent == 25
    else:
        assert new.phase is Phase.ROLLED_BACK and d.split_percent == 0


def test_the_last_stage_passing_promotes_and_a_finished_rollout_refuses_more_ticks():
    state = RolloutState(Phase.STAGE, 2, phase_started_s=0.0, baseline_p99_ms=10.0)
    new, d = decide_release(state, GOOD_STAGE, plan(), 10.0)
    assert d.action is Action.PROMOTE and d.reason is Reason.ALL_STAGES_PASSED and new.phase is Phase.PROMOTED
    with pytest.raises(ValueError, match="over"):
        decide_release(new, GOOD_STAGE, plan(), 11.0)


def _script(ticks, release):
    """Run a rollout through ``(now_s, observation)`` ticks; the (action, reason, split) of every decision."""
    state, d = start(release, 0.0)
    out = [(d.action, d.reason, d.split_percent)]
    for now_s, obs in ticks:
        state, d = decide_release(state, obs, release, now_s)
        out.append((d.action, d.reason, d.split_percent))
        if state.phase in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.REJECTED):
            break
    return state, out


def test_scripted_good_rollout_climbs_every_stage_then_promotes():
    ticks = [(5, GOOD_SHADOW), (10, GOOD_SHADOW), (15, GOOD_STAGE), (20, GOOD_STAGE), (25, GOOD_STAGE),
             (30, GOOD_STAGE), (35, GOOD_STAGE), (40, GOOD_STAGE)]
    state, out = _script(ticks, plan())
    assert state.phase is Phase.PROMOTED
    assert [split for *_, split in out] == [0, 0, 5, 5, 25, 25, 100, 100, 0]
    assert [a for a, *_ in out].count(Action.ADVANCE) == 3 and out[-1][0] is Action.PROMOTE


def test_scripted_rollout_rolls_back_when_latency_degrades_in_the_second_stage():
    slow = Observation(challenger=latency_stats([10.0] * 20 + [80.0] * 5), drift=0.1)
    state, out = _script([(10, GOOD_SHADOW), (20, GOOD_STAGE), (22, GOOD_STAGE), (24, slow), (26, GOOD_STAGE)], plan())
    assert state.phase is Phase.ROLLED_BACK
    assert out[-1] == (Action.ROLLBACK, Reason.P99_BREACH, 0.0)
    assert len(out) == 5  # the tick after the rollback never ran
