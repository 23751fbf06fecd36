"""The rollout controller against a real MLflow store and a scripted in-process router (no Ray).

The router here is an honest fake of ``examples/router.py``'s control surface: it produces request
records at a fixed rate on a fake clock, served by the split it was told, with per-model latency,
failures and predictions the test chooses -- so each rule of the gate is exercised deterministically.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LinearRegression

from runtime.release.registry import alias_version
from runtime.release.rollout import run_rollout
from runtime.spec.release import ReleaseSpec
from runtime.tracking.tracker import CHALLENGER, CHAMPION, Tracker, register_model

pytestmark = pytest.mark.integration

NAME = "scripted"


class Clock:
    def __init__(self):
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, s: float) -> None:
        self.now_s += s


class ScriptedRouter:
    """``rps`` requests per second of fake time; each model answers by its ``behaviour(rng) -> (latency_ms, pred|None)``."""

    def __init__(self, clock: Clock, champion, challenger, *, rps: float = 40.0, fail_at_s: float | None = None):
        self.clock, self.behaviour, self.rps, self.fail_at_s = clock, {CHAMPION: champion, CHALLENGER: challenger}, rps, fail_at_s
        self.rng = random.Random(0)
        self.split, self.fraction, self.seq, self.last_s = 0.0, 0.0, 0, clock()
        self.configured: list[tuple[float, float]] = []
        self.loaded: list[tuple] = []

    def load(self, champion, challenger):
        self.loaded.append((champion, challenger))
        return {"versions": {}, "next": self.seq}

    def configure(self, split_percent, shadow_fraction):
        self.split, self.fraction = split_percent, shadow_fraction
        self.configured.append((split_percent, shadow_fraction))
        return {"next": self.seq}

    def records(self, since):
        if self.fail_at_s is not None and self.clock() >= self.fail_at_s:
            raise RuntimeError("the router went away")
        n = int((self.clock() - self.last_s) * self.rps)
        self.last_s = self.clock()
        out = [self._request() for _ in range(n)]
        return {"records": out, "feedback": [], "next": self.seq}

    def _request(self) -> dict:
        role = CHALLENGER if self.rng.random() * 100 < self.split else CHAMPION
        mirrored = role == CHAMPION and self.rng.random() < self.fraction
        r = {"seq": self.seq, "t": self.clock(), "request_id": f"r{self.seq}", "served_by": role, "mirrored": mirrored,
             "latency_ms": {}, "ok": {}, "predictions": {}}
        for who in [role] + ([CHALLENGER] if mirrored else []):
            latency_ms, pred = self.behaviour[who](self.rng)
            r["latency_ms"][who], r["ok"][who] = latency_ms, pred is not None
            r["predictions"][who] = [pred] if pred is not None else None
        self.seq += 1
        return r


def good(rng):
    return 2.0 + rng.random(), rng.gauss(0.0, 1.0)


@pytest.fixture()
def uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    x = np.random.default_rng(0).normal(size=(50, 3))
    for has_champion in (False, True):
        tracker = Tracker(uri, "jobs", "job")
        register_model(tracker, LinearRegression().fit(x, x.sum(axis=1)), NAME, beats_champion=True,
                       has_champion=has_champion)
        tracker.end()
    return uri


def plan(**shadow) -> ReleaseSpec:
    return ReleaseSpec.model_validate({
        "shadow": {"fraction": 0.5, "duration_s": 5, **shadow},
        "stages": [{"percent": 10, "hold_s": 5}, {"percent": 50, "hold_s": 5}, {"percent": 100, "hold_s": 5}],
        "risk_budget": {"max_error_rate": 0.02, "min_requests": 10, "max_wait_s": 20, "max_prediction_drift": 0.5},
        "poll_interval_s": 1.0,
    })


def rollout(uri, router, clock, release):
    return run_rollout(NAME, release, router, tracking_uri=uri, experiment="releases", clock=clock, sleep=clock.sleep)


def test_a_challenger_that_disagrees_in_shadow_is_rejected_before_any_live_traffic(uri):
    clock = Clock()
    router = ScriptedRouter(clock, good, lambda rng: (2.0, rng.gauss(5.0, 1.0)))  # predictions shifted by 5
    result = rollout(uri, router, clock, plan(min_agreement=0.9, agreement_tolerance=0.5))
    assert (result["outcome"], result["reason"]) == ("rejected", "agreement_low")
    assert max(split for split, _ in router.configured) == 0  # the challenger never served anyone
    client = MlflowClient(uri)
    assert alias_version(client, NAME, CHAMPION) == 1 and alias_version(client, NAME, CHALLENGER) is None
    assert router.loaded[-1] == (1, None)
    assert client.get_run(result["run_id"]).data.tags["headroom.release.outcome"] == "rejected"


def test_a_challenger_that_fails_requests_is_stopped_by_the_error_budget(uri):
    clock = Clock()
    flaky = lambda rng: (2.0, None) if rng.random() < 0.2 else good(rng)  # noqa: E731
    result = rollout(uri, ScriptedRouter(clock, good, flaky), clock, plan())
    assert (result["outcome"], result["reason"]) == ("rejected", "error_rate_breach")  # its mirrors failed

    clock = Clock()  # the same challenger straight into stages (no shadow phase): rolled back in the first
    router = ScriptedRouter(clock, good, flaky)
    MlflowClient(uri).set_registered_model_alias(NAME, CHALLENGER, 2)
    result = rollout(uri, router, clock, plan(duration_s=0))
    assert (result["outcome"], result["reason"]) == ("rolled_back", "error_rate_breach")
    assert router.configured[0] == (10.0, 0.0) and router.configured[-1] == (0.0, 0.0)
    assert alias_version(MlflowClient(uri), NAME, CHAMPION) == 1


def test_a_good_challenger_passes_every_stage_in_order(uri):
    clock = Clock()
    router = ScriptedRouter(clock, good, good)
    result = rollout(uri, router, clock, plan())
    assert result["outcome"] == "promoted"
    # No flip back to the old champion: 100 % stays on the challenger until the router reloads it as champion.
    assert router.configured == [(0.0, 0.5), (10.0, 0.0), (50.0, 0.0), (100.0, 0.0)]
    client = MlflowClient(uri)
    assert (alias_version(client, NAME, CHAMPION), alias_version(client, NAME, "previous-champion")) == (2, 1)
    assert router.loaded[-1] == (2, None)


def test_an_error_mid_rollout_returns_the_split_to_zero_and_leaves_champion_alone(uri):
    clock = Clock()
    router = ScriptedRouter(clock, good, good, fail_at_s=clock() + 8)  # during the first stage
    with pytest.raises(RuntimeError, match="went away"):
        rollout(uri, router, clock, plan())
    assert router.configured[-1] == (0.0, 0.0)
    client = MlflowClient(uri)
    assert alias_version(client, NAME, CHAMPION) == 1 and alias_version(client, NAME, CHALLENGER) == 2
    run = client.search_runs([client.get_experiment_by_name("releases").experiment_id])[0]
    assert run.info.status == "FAILED" and run.data.tags["headroom.release.outcome"] == "failed"
