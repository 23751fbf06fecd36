"""Release gates, as pure logic: shadow test, staged rollout, and the risk budget that triggers rollback.

A rollout walks a plan: a **shadow** phase (the champion serves everything, a fraction of requests is
mirrored to the challenger), then **stages** that send a growing share of live traffic to the challenger
(e.g. 5 % -> 25 % -> 100 %), each held for ``hold_s``. After every poll the controller
(:mod:`runtime.release.rollout`) summarises what the router saw into an :class:`Observation` and calls::

    state, decision = decide_release(state, observation, plan, now_s)

which returns HOLD, ADVANCE, PROMOTE, ROLLBACK or REJECT with a named :class:`Reason` and a
human-readable detail. No clocks, no I/O, no Ray, no MLflow: the controller owns all of those, so
every rule here is testable tick by tick.

The risk budget (``plan.risk_budget``), judged once a stage has ``min_requests`` challenger requests:

- serving p99 of the challenger <= baseline p99 + max(ratio x baseline, ms), where the baseline is
  the champion's p99 measured during the shadow phase;
- challenger error rate <= ``max_error_rate``;
- prediction drift (two-sample Kolmogorov-Smirnov statistic between the challenger's predictions in
  the stage and the champion's predictions in the shadow phase) <= ``max_prediction_drift``.

A breach rolls back at once, mid-stage; a stage that never gathers enough requests within
``hold_s + max_wait_s`` rolls back too (no evidence, no promotion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np


class Phase(str, Enum):
    SHADOW = "shadow"
    STAGE = "stage"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"  # failed the shadow test: never received live traffic


TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.REJECTED})


class Action(str, Enum):
    HOLD = "hold"
    ADVANCE = "advance"  # to the next stage (from shadow: to the first stage)
    PROMOTE = "promote"  # the last stage passed: the challenger becomes champion
    ROLLBACK = "rollback"  # a stage breached the risk budget: split back to 0 %
    REJECT = "reject"  # the shadow test failed: no live traffic ever


class Reason(str, Enum):
    SHADOWING = "shadowing"
    HOLDING = "holding"
    INSUFFICIENT_DATA = "insufficient_data"
    SHADOW_PASSED = "shadow_passed"
    AGREEMENT_LOW = "agreement_low"
    METRIC_WORSE = "metric_worse"
    STAGE_PASSED = "stage_passed"
    ALL_STAGES_PASSED = "all_stages_passed"
    P99_BREACH = "p99_breach"
    ERROR_RATE_BREACH = "error_rate_breach"
    DRIFT_BREACH = "drift_breach"


@dataclass(frozen=True)
class LatencyStats:
    """Requests one model answered in a window: count, failures, latency percentiles."""

    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def latency_stats(latencies_ms: Sequence[float], errors: int = 0) -> LatencyStats:
    """Summarise successful requests' latencies plus a count of failed ones.

    >>> latency_stats([1.0, 2.0, 3.0], errors=1).requests
    4
    """
    ok = np.asarray(latencies_ms, dtype=float)
    if ok.size == 0:
        return LatencyStats(requests=errors, errors=errors)
    return LatencyStats(requests=int(ok.size) + errors, errors=errors,
                        p50_ms=float(np.percentile(ok, 50)), p99_ms=float(np.percentile(ok, 99)))


def prediction_drift(predictions: Sequence[float], reference: Sequence[float]) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic (0: same distribution, 1: disjoint); None without data."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(predictions, dtype=float), np.asarray(reference, dtype=float)
    if a.size == 0 or b.size == 0:
        return None
    return float(ks_2samp(a, b).statistic)


def agreement(pairs: Sequence[tuple[float, float]], tolerance: float) -> float | None:
    """Share of (champion, challenger) prediction pairs within ``tolerance`` of each other (0: exact)."""
    if not pairs:
        return None
    a = np.asarray([p[0] for p in pairs], dtype=float)
    b = np.asarray([p[1] for p in pairs], dtype=float)
    return float(np.mean(np.abs(a - b) <= tolerance))


def feedback_metric(metric: str, labels: Sequence[float], predictions: Sequence[float]) -> float | None:
    """The validation metric (greater is better) on labelled feedback; None when it cannot be computed."""
    from runtime.training.trainers.sklearn import PREDICTION_SCORERS

    y, p = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    if y.size < 2:
        return None
    scorer = PREDICTION_SCORERS.get(metric)  # neg_log_loss needs probabilities, which the router does not keep
    return float(scorer(y, p)) if scorer else None


@dataclass(frozen=True)
class Observation:
    """What the router saw since the current phase began (built by the controller)."""

    champion: LatencyStats = LatencyStats()  # requests the champion served
    challenger: LatencyStats = LatencyStats()  # mirrored (shadow) or served (stages) by the challenger
    drift: float | None = None  # KS(challenger predictions, champion's shadow-phase predictions)
    agreement: float | None = None  # shadow: share of mirrored pairs that agree
    pairs: int = 0
    metric_champion: float | None = None  # on labelled feedback, where present
    metric_challenger: float | None = None
    labelled: int = 0


@dataclass(frozen=True)
class RolloutState:
    phase: Phase = Phase.SHADOW
    stage_index: int = -1  # -1 during shadow
    phase_started_s: float = 0.0
    baseline_p99_ms: float | None = None  # the champion's p99 in the shadow phase


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    detail: str
    phase: Phase  # the phase after the decision
    stage_index: int
    split_percent: float  # share of live traffic the challenger should serve from now on
    shadow_fraction: float  # share of champion requests to mirror from now on
    at_s: float

    def as_record(self) -> dict:
        return {"action": self.action.value, "reason": self.reason.value, "detail": self.detail,
                "phase": self.phase.value, "stage_index": self.stage_index, "split_percent": self.split_percent,
                "shadow_fraction": self.shadow_fraction, "at_s": self.at_s}


def start(plan, now_s: float) -> tuple[RolloutState, Decision]:
    """The first state, and the directive that opens the shadow phase (or the first stage without one)."""
    state = RolloutState(phase_started_s=now_s)
    if plan.shadow.duration_s <= 0 or plan.shadow.fraction <= 0:
        state = replace(state, phase=Phase.STAGE, stage_index=0)
        return state, _decision(state, plan, Action.ADVANCE, Reason.SHADOW_PASSED, "no shadow phase in the plan", now_s)
    return state, _decision(state, plan, Action.HOLD, Reason.SHADOWING,
                            f"mirroring {plan.shadow.fraction:.0%} of requests to the challenger", now_s)


def decide_release(state: RolloutState, obs: Observation, plan, now_s: float) -> tuple[RolloutState, Decision]:
    """One tick of the rollout: judge ``obs`` (the current phase so far) against ``plan`` at ``now_s``."""
    if state.phase in TERMINAL:
        raise ValueError(f"the rollout is over ({state.phase.value}); start a new one")
    if state.phase is Phase.SHADOW:
        return _decide_shadow(state, obs, plan, now_s)
    return _decide_stage(state, obs, plan, now_s)


def _decide_shadow(state, obs, plan, now_s):
    shadow, budget = plan.shadow, plan.risk_budget
    elapsed = now_s - state.phase_started_s
    if elapsed < shadow.duration_s:
        return state, _decision(state, plan, Action.HOLD, Reason.SHADOWING, f"{elapsed:.0f}/{shadow.duration_s:.0f} s", now_s)
    enough = min(obs.champion.requests, obs.challenger.requests) >= budget.min_requests
    if not enough:
        detail = (f"{obs.champion.requests} champion / {obs.challenger.requests} mirrored requests, "
                  f"need {budget.min_requests} of each")
        if elapsed < shadow.duration_s + budget.max_wait_s:
            return state, _decision(state, plan, Action.HOLD, Reason.INSUFFICIENT_DATA, detail, now_s)
        return _finish(state, plan, Phase.REJECTED, Action.REJECT, Reason.INSUFFICIENT_DATA, detail, now_s)
    failure = _shadow_failure(obs, plan)
    if failure:
        return _finish(state, plan, Phase.REJECTED, Action.REJECT, *failure, now_s)
    nxt = RolloutState(Phase.STAGE, 0, now_s, baseline_p99_ms=obs.champion.p99_ms)
    return nxt, _decision(nxt, plan, Action.ADVANCE, Reason.SHADOW_PASSED, _shadow_summary(obs), now_s)


def _shadow_failure(obs: Observation, plan) -> tuple[Reason, str] | None:
    shadow, budget = plan.shadow, plan.risk_budget
    if obs.challenger.error_rate > budget.max_error_rate:  # failing on mirrored calls: never send it live traffic
        return Reason.ERROR_RATE_BREACH, (f"challenger failed {obs.challenger.errors}/{obs.challenger.requests} "
                                          f"mirrored calls (> {budget.max_error_rate:.2%})")
    if shadow.min_agreement is not None and (obs.agreement or 0.0) < shadow.min_agreement:
        return Reason.AGREEMENT_LOW, f"agreement {_fmt(obs.agreement)} < {shadow.min_agreement} on {obs.pairs} pairs"
    if obs.metric_champion is not None and obs.metric_challenger is not None \
            and obs.labelled >= budget.min_requests \
            and obs.metric_challenger < obs.metric_champion - shadow.max_metric_drop:
        return Reason.METRIC_WORSE, (f"metric on {obs.labelled} labelled rows: challenger {obs.metric_challenger:.4f} "
                                     f"< champion {obs.metric_champion:.4f} - {shadow.max_metric_drop}")
    return None


def _shadow_summary(obs: Observation) -> str:
    return (f"agreement {_fmt(obs.agreement)} on {obs.pairs} pairs; metric challenger {_fmt(obs.metric_challenger)} "
            f"vs champion {_fmt(obs.metric_champion)}; baseline p99 {_fmt(obs.champion.p99_ms)} ms")


def _decide_stage(state, obs, plan, now_s):
    stage, budget = plan.stages[state.stage_index], plan.risk_budget
    elapsed = now_s - state.phase_started_s
    n = obs.challenger.requests
    if n >= budget.min_requests:
        breach = budget_breach(obs, state.baseline_p99_ms, budget)
        if breach:
            return _finish(state, plan, Phase.ROLLED_BACK, Action.ROLLBACK, *breach, now_s)
    if elapsed < stage.hold_s:
        return state, _decision(state, plan, Action.HOLD, Reason.HOLDING,
                                f"stage {state.stage_index + 1} at {stage.percent:g} %: {elapsed:.0f}/{stage.hold_s:.0f} s, "
                                f"{n} challenger requests", now_s)
    if n < budget.min_requests:
        detail = f"{n} challenger requests at {stage.percent:g} %, need {budget.min_requests}"
        if elapsed < stage.hold_s + budget.max_wait_s:
            return state, _decision(state, plan, Action.HOLD, Reason.INSUFFICIENT_DATA, detail, now_s)
        return _finish(state, plan, Phase.ROLLED_BACK, Action.ROLLBACK, Reason.INSUFFICIENT_DATA, detail, now_s)
    detail = (f"stage {state.stage_index + 1} at {stage.percent:g} % held {elapsed:.0f} s: p99 "
              f"{_fmt(obs.challenger.p99_ms)} ms, errors {obs.challenger.error_rate:.2%}, drift {_fmt(obs.drift)}")
    if state.stage_index + 1 == len(plan.stages):
        return _finish(state, plan, Phase.PROMOTED, Action.PROMOTE, Reason.ALL_STAGES_PASSED, detail, now_s)
    nxt = replace(state, stage_index=state.stage_index + 1, phase_started_s=now_s)
    return nxt, _decision(nxt, plan, Action.ADVANCE, Reason.STAGE_PASSED, detail, now_s)


def allowed_p99_ms(baseline_p99_ms: float, budget) -> float:
    """The highest challenger p99 the budget tolerates: baseline + max(ratio x baseline, ms)."""
    return baseline_p99_ms + max(budget.max_p99_increase_ratio * baseline_p99_ms, budget.max_p99_increase_ms)


def budget_breach(obs: Observation, baseline_p99_ms: float | None, budget) -> tuple[Reason, str] | None:
    """The first risk-budget rule ``obs`` breaks, as ``(reason, detail)``; None when within budget."""
    chal = obs.challenger
    if chal.error_rate > budget.max_error_rate:
        return Reason.ERROR_RATE_BREACH, (f"challenger error rate {chal.error_rate:.2%} "
                                          f"({chal.errors}/{chal.requests}) > {budget.max_error_rate:.2%}")
    if baseline_p99_ms is not None and chal.p99_ms is not None:
        limit = allowed_p99_ms(baseline_p99_ms, budget)
        if chal.p99_ms > limit:
            return Reason.P99_BREACH, (f"challenger p99 {chal.p99_ms:.1f} ms > {limit:.1f} ms "
                                       f"(baseline {baseline_p99_ms:.1f} ms)")
    if obs.drift is not None and obs.drift > budget.max_prediction_drift:
        return Reason.DRIFT_BREACH, f"prediction drift {obs.drift:.3f} > {budget.max_prediction_drift}"
    return None


def _finish(state, plan, phase: Phase, action: Action, reason: Reason, detail: str, now_s: float):
    nxt = replace(state, phase=phase, phase_started_s=now_s)
    return nxt, _decision(nxt, plan, action, reason, detail, now_s)


def _decision(state: RolloutState, plan, action: Action, reason: Reason, detail: str, now_s: float) -> Decision:
    if state.phase is Phase.SHADOW:
        split, fraction = 0.0, plan.shadow.fraction
    elif state.phase is Phase.STAGE:
        split, fraction = float(plan.stages[state.stage_index].percent), 0.0
    else:  # terminal: after PROMOTE the router serves the new champion alone; after a rollback the old one
        split, fraction = 0.0, 0.0
    return Decision(action, reason, detail, state.phase, state.stage_index, split, fraction, now_s)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
