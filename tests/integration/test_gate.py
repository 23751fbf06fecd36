"""The validation gate against a real MLflow store (SQLite in tmp_path), with real scikit-learn models. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import SGDClassifier, SGDRegressor

from runtime.governance.gate import run_gate
from runtime.spec.job import ValidationSpec

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("gate")).info.run_id
    return uri, client, run_id


def regression(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(800, 3))
    return x, x @ np.array([1.0, 2.0, 3.0]) + rng.normal(0, 0.1, 800)


def test_a_better_candidate_passes_and_both_evaluations_are_in_mlflow(store):
    uri, client, run_id = store
    x, y = regression()
    good = SGDRegressor(random_state=0).fit(x, y)
    weak = SGDRegressor(max_iter=1, tol=None, random_state=0).fit(x[:30], y[:30])
    res = run_gate(good, weak, 4, x, y, validation=ValidationSpec(holdout="h", min_score=0.9), classifier=False,
                   feature_names=["a", "b", "c"], tracking_uri=uri, run_id=run_id)
    assert res.passed and res.reasons == "" and res.candidate > 0.99 and res.champion < res.candidate
    metrics = client.get_run(run_id).data.metrics
    assert metrics["holdout_r2"] == pytest.approx(res.candidate) and metrics["r2_score"] == pytest.approx(res.candidate)
    (child,) = [r for r in client.search_runs([client.get_run(run_id).info.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == run_id]
    assert child.info.run_name == "holdout-champion-v4"
    assert child.data.metrics["holdout_r2"] == pytest.approx(res.champion)


@pytest.mark.parametrize("bounds, failing_check", [
    ({"min_improvement": 0.5}, "minimum absolute change check failed"),
    ({"min_relative_improvement": 0.5}, "minimum relative change check failed"),
    ({"min_score": 0.9999}, "value threshold check failed"),
    ({}, "minimum relative change check failed"),  # default: at least the champion's score
])
def test_each_bound_can_hold_the_candidate_back(store, bounds, failing_check):
    uri, _, run_id = store
    x, y = regression()
    model = SGDRegressor(random_state=0).fit(x, y)
    champion = SGDRegressor(random_state=0).fit(x, y) if bounds else SGDRegressor(random_state=1, max_iter=3, tol=None).fit(x, y)
    candidate = model if bounds else SGDRegressor(max_iter=1, tol=None, random_state=0).fit(x[:30], y[:30])
    res = run_gate(candidate, champion, 1, x, y, validation=ValidationSpec(holdout="h", **bounds), classifier=False,
                   feature_names=["a", "b", "c"], tracking_uri=uri, run_id=run_id)
    assert not res.passed and failing_check in res.reasons and "holdout_r2" in res.reasons


def test_without_a_champion_only_the_absolute_bound_applies(store):
    uri, _, run_id = store
    x, y = regression()
    weak = SGDRegressor(max_iter=1, tol=None, random_state=0).fit(x[:30], y[:30])
    spec = ValidationSpec(holdout="h", min_improvement=0.5)
    assert run_gate(weak, None, None, x, y, validation=spec, classifier=False, feature_names=list("abc"),
                    tracking_uri=uri, run_id=run_id).passed
    strict = ValidationSpec(holdout="h", min_score=0.99)
    res = run_gate(weak, None, None, x, y, validation=strict, classifier=False, feature_names=list("abc"),
                   tracking_uri=uri, run_id=run_id)
    assert not res.passed and res.champion is None


@pytest.mark.parametrize("metric", ["accuracy", "f1", "neg_log_loss"])
def test_classifier_metrics_gate_too(store, metric):
    uri, _, run_id = store
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    good = SGDClassifier(loss="log_loss", random_state=0).fit(x, y)
    wrong = SGDClassifier(loss="log_loss", max_iter=1, tol=None, random_state=0).fit(x[:20], 1 - y[:20])
    spec = ValidationSpec(holdout="h", metric=metric, min_relative_improvement=0.01)
    assert run_gate(good, wrong, 1, x, y, validation=spec, classifier=True, feature_names=list("abc"),
                    tracking_uri=uri, run_id=run_id).passed
    assert not run_gate(wrong, good, 1, x, y, validation=spec, classifier=True, feature_names=list("abc"),
                        tracking_uri=uri, run_id=run_id).passed
