"""The rollout controller: drives a champion/challenger router through shadow and stages, then acts.

Decide, then act (see ``/work/shared/STYLE.md``): every poll it fetches the router's new records,
summarises the current phase (:func:`runtime.release.stats.observe`), asks the pure gate
(:func:`runtime.release.gates.decide_release`) what to do, and only then touches anything: the router's
split, the MLflow aliases (:mod:`runtime.release.registry`), and the rollout's MLflow run -- params, a metric
row per poll, ``release/decisions.json``, ``release/events.json`` and the report with its plots.

>>> result = run_rollout("demo-regressor", spec.release, ServeRouter(), tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
>>> result["outcome"]  # doctest: +SKIP
'promoted'

The router is anything with ``load``, ``configure`` and ``records`` (:class:`RouterControl`):
:class:`ServeRouter` talks to ``examples/router.py`` on Ray Serve through its deployment handle.
If anything fails mid-rollout the split goes back to 0 % and ``champion`` is left where it was.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mlflow import MlflowClient

from runtime.errors import ReleaseError
from runtime.release.registry import abort_rollout, alias_version, current_champion, promote
from runtime.release.gates import TERMINAL, Action, Decision, Observation, Phase, RolloutState, decide_release, start
from runtime.release.stats import CHAMPION, labels_by_request, observe, phase_summary, predictions
from runtime.release.report import write_report
from runtime.tracking.tracker import CHALLENGER, Tracker, mlflow_scope


class RouterControl(Protocol):
    def load(self, champion: int | None, challenger: int | None) -> dict: ...  # -> {"versions", "next"}
    def configure(self, split_percent: float, shadow_fraction: float) -> dict: ...  # -> {..., "next"}
    def records(self, since: int) -> dict: ...  # -> {"records", "feedback", "next"}


class ServeRouter:
    """:class:`RouterControl` over the ``Router`` deployment's handle (the caller is connected to Ray)."""

    def __init__(self, app_name: str = "headroom-router", deployment: str = "Router", timeout_s: float = 120.0):
        from ray import serve

        try:
            serve.status().applications[app_name]
        except KeyError:
            raise ReleaseError(f"no Ray Serve application named {app_name!r} is running", where="router",
                               fix="start the router first (examples/router.py: start_router) or pass --app") from None
        self._handle = serve.get_deployment_handle(deployment, app_name=app_name)
        self._timeout_s = timeout_s

    def load(self, champion, challenger):
        return self._call("load", champion=champion, challenger=challenger)

    def configure(self, split_percent, shadow_fraction):
        return self._call("configure", split_percent, shadow_fraction)

    def records(self, since):
        return self._call("records", since)

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self._handle, method).remote(*args, **kwargs).result(timeout_s=self._timeout_s)
        except Exception as exc:  # Ray wraps the replica's error; name the call and the cause in one line
            cause = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise ReleaseError(f"the router refused {method} ({cause})", where="router",
                               fix="check the router's replica log (ray logs / the dashboard) and the model versions") from exc


def run_rollout(name: str, plan, router: RouterControl, *, tracking_uri: str, experiment: str = "headroom",
                metric: str = "r2", clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep,
                on_decision: Callable[[Decision], None] | None = None) -> dict:
    """Roll the ``challenger`` of model ``name`` out by ``plan`` (a ``ReleaseSpec``); returns the result dict."""
    with mlflow_scope(tracking_uri):  # MLflow's HTTP limits for the span of the rollout, then the caller's own
        return _run_rollout(name, plan, router, tracking_uri, experiment, metric, clock, sleep, on_decision)


def _run_rollout(name, plan, router, tracking_uri, experiment, metric, clock, sleep, on_decision) -> dict:
    client = MlflowClient(tracking_uri)
    champion = current_champion(client, name)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise ReleaseError(f"model {name!r} has no challenger to roll out", where="registry",
                           fix="train a candidate that beats the champion (it is aliased challenger), then roll out")
    router.load(champion, challenger)
    tracker = Tracker(tracking_uri, experiment, f"rollout-{name}-v{challenger}")
    tracker.log_params({"release": plan.model_dump(mode="json"), "model": name, "champion_version": champion,
                        "challenger_version": challenger, "metric": metric})
    tracker.set_tags({"headroom.release.model": name, "headroom.release.challenger": challenger})
    rollout = _Rollout(name, plan, router, client, tracker, champion, challenger, metric, clock, sleep, on_decision)
    try:
        result = rollout.drive()
    except BaseException:
        _safe_stop(router)  # serving first: whatever went wrong, the champion takes all traffic again
        tracker.set_tags({"headroom.release.outcome": "failed"})
        tracker.end("FAILED")
        raise
    tracker.end()
    return result


def _safe_stop(router: RouterControl) -> None:
    try:
        router.configure(0.0, 0.0)
    except Exception:  # noqa: BLE001 -- the original error is the one to report
        pass


class _Rollout:
    """One rollout's loop and bookkeeping; :meth:`drive` runs it to a terminal phase."""

    def __init__(self, name, plan, router, client, tracker, champion, challenger, metric, clock, sleep, on_decision):
        self.name, self.plan, self.router, self.client, self.tracker = name, plan, router, client, tracker
        self.champion, self.challenger, self.metric = champion, challenger, metric
        self.clock, self.sleep, self.on_decision = clock, sleep, on_decision or (lambda d: None)
        self.t0_s = clock()
        self.records: list[dict] = []  # every record of the rollout, tagged with its phase label
        self.labels: dict[str, list[float]] = {}
        self.decisions: list[dict] = []
        self.phases: list[dict] = []
        self.baseline_predictions: list[float] = []
        self.boundaries: list[tuple[int, str]] = []  # (first record number, phase label), in order
        self.phase_records: list[dict] = []  # the current phase's records
        self.fetch_from: int | None = None  # the router's next record number not yet fetched

    def _phase_of(self, seq: int) -> str:
        """The phase a record belongs to: the last one that had begun when the router numbered it."""
        return next((label for start, label in reversed(self.boundaries) if seq >= start), "before")

    def drive(self) -> dict:
        state, decision = start(self.plan, self.clock())
        self._begin_phase(state, decision)
        tick = 0
        while state.phase not in TERMINAL:
            self.sleep(self.plan.poll_interval_s)
            self._fetch()
            obs = observe(state.phase, self.phase_records, self.labels, metric=self.metric,
                          tolerance=self.plan.shadow.agreement_tolerance, baseline_predictions=self.baseline_predictions)
            before = state
            state, decision = decide_release(state, obs, self.plan, self.clock())
            tick += 1
            self._log_tick(tick, decision, obs)
            if decision.action is not Action.HOLD:
                self._end_phase(before, obs)
                self._begin_phase(state, decision)
        return self._finish(state, decision)

    def _fetch(self) -> None:
        """Take the router's new records and feedback; the current phase keeps those numbered inside it."""
        batch = self.router.records(self.fetch_from)
        self.fetch_from = batch["next"]
        self.labels.update(labels_by_request(batch["feedback"]))
        self.records.extend({**r, "phase": self._phase_of(r["seq"])} for r in batch["records"])
        self.phase_records.extend(r for r in batch["records"] if r["seq"] >= self.boundaries[-1][0])

    def _end_phase(self, state: RolloutState, obs: Observation) -> None:
        self.phases.append(phase_summary(_label(state, self.plan), _percent(state, self.plan), obs))
        if state.phase is Phase.SHADOW:  # the champion's shadow predictions: the stages' drift reference
            self.baseline_predictions = predictions(self.phase_records, CHAMPION)

    def _begin_phase(self, state: RolloutState, decision: Decision) -> None:
        """Act on a decision: set the router's split (0 % once the rollout is over) and note where the phase begins."""
        self.decisions.append({**decision.as_record(), "at_s": decision.at_s - self.t0_s})
        self.on_decision(decision)
        if decision.phase in TERMINAL:
            if decision.action is not Action.PROMOTE:  # traffic back first, aliases after (see _finish)
                self.router.configure(0.0, 0.0)
            return  # a promotion keeps the challenger at 100 % until the router reloads it as champion
        first = self.router.configure(decision.split_percent, decision.shadow_fraction)["next"]
        if self.fetch_from is None:
            self.fetch_from = first
        self.boundaries.append((first, _label(state, self.plan)))
        self.phase_records = []

    def _finish(self, state: RolloutState, decision: Decision) -> dict:
        if decision.action is Action.PROMOTE:
            move = promote(self.client, self.name, self.challenger, reason=decision.detail)
        else:  # ROLLBACK or REJECT
            move = abort_rollout(self.client, self.name, champion=self.champion, challenger=self.challenger,
                                 reason=f"{decision.reason.value}: {decision.detail}")
        self.router.load(move.champion_after, None)  # serve the champion alone
        result = {"model": self.name, "outcome": state.phase.value, "reason": decision.reason.value,
                  "detail": decision.detail, "champion_before": self.champion, "champion_after": move.champion_after,
                  "challenger": self.challenger, "previous_champion": move.previous_champion,
                  "run_id": self.tracker.run_id, "phases": self.phases, "decisions": self.decisions,
                  "duration_s": self.clock() - self.t0_s}
        self._record(result, move.as_record())
        return result

    def _log_tick(self, tick: int, decision: Decision, obs: Observation) -> None:
        self.tracker.log_metrics({
            "split_percent": decision.split_percent, "shadow_fraction": decision.shadow_fraction,
            "champion_p99_ms": obs.champion.p99_ms, "challenger_p99_ms": obs.challenger.p99_ms,
            "challenger_error_rate": obs.challenger.error_rate if obs.challenger.requests else None,
            "prediction_drift": obs.drift, "agreement": obs.agreement,
            "champion_requests": obs.champion.requests, "challenger_requests": obs.challenger.requests,
        }, step=tick)

    def _record(self, result: dict, move: dict) -> None:
        self.tracker.set_tags({"headroom.release.outcome": result["outcome"], "headroom.release.reason": result["reason"],
                               "headroom.release.champion_after": result["champion_after"]})
        with tempfile.TemporaryDirectory(prefix="hr-rollout-") as tmp:
            out = Path(tmp)
            (out / "decisions.json").write_text(json.dumps(self.decisions, indent=2))
            (out / "events.json").write_text(json.dumps({"alias_move": move, "result": _brief(result)}, indent=2))
            write_report(out, result, self.records, self.plan, t0_wall_s=_first_t(self.records))
            for path in sorted(out.iterdir()):
                self.tracker.log_file(path, "release")


def _label(state: RolloutState, plan) -> str:
    return "shadow" if state.phase is Phase.SHADOW else f"stage {state.stage_index + 1} ({plan.stages[state.stage_index].percent:g} %)"


def _percent(state: RolloutState, plan) -> float:
    return 0.0 if state.phase is Phase.SHADOW else float(plan.stages[state.stage_index].percent)


def _first_t(records: list[dict]) -> float:
    return min((r["t"] for r in records), default=0.0)


def _brief(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("phases", "decisions")}
