"""The router's logic in-process (no Ray Serve): real model versions from a real MLflow store -- a torch pt2
champion and a scikit-learn challenger -- routed, mirrored and recorded."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient

from examples.router import _RouterCore
from runtime.tracking.tracker import CHALLENGER
from tests.support.release import N_FEATURES, fit_linear, register_sklearn

pytestmark = pytest.mark.integration

NAME = "core-model"


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    import mlflow

    from runtime.training.trainers.torch_trainer import TorchTrainer, log_torch_model

    uri = f"sqlite:///{tmp_path_factory.mktemp('router') / 'mlflow.db'}"
    spec = SimpleNamespace(estimator="examples.torch_models:make_mlp", params={"in_features": N_FEATURES, "hidden": 8},
                           classes=None)
    trainer = TorchTrainer(spec, None)
    x = np.random.default_rng(0).normal(size=(64, N_FEATURES)).astype(np.float32)
    trainer.fit_batch(x, x.sum(axis=1))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = log_torch_model(trainer.model)
    MlflowClient(uri).set_registered_model_alias(NAME, "champion", mlflow.register_model(info.model_uri, NAME).version)
    register_sklearn(uri, NAME, fit_linear(rows=500, seed=1), has_champion=True)
    return uri


def send(core: _RouterCore, n: int, rows: int = 3) -> list[dict]:
    async def go():
        out = []
        for i in range(n):
            x = np.random.default_rng(i).normal(size=(rows, N_FEATURES))
            response = await core._predict(x, f"q{i}")
            out.append(response)
        for _ in range(600):  # let the background mirrors finish (bounded: 60 s)
            if core.mirrors_in_flight == 0:
                break
            await asyncio.sleep(0.1)
        return out

    return asyncio.run(go())


def test_shadow_mirrors_without_touching_responses_and_records_both_models(uri):
    core = _RouterCore(uri, NAME, seed=1)
    assert core.versions() == {"champion": 1, "challenger": 2}
    core.configure(split_percent=0, shadow_fraction=1.0)
    responses = send(core, 5)
    assert all(r.status_code == 200 and b'"model":"champion"' in r.body for r in responses)
    records = core.records_since(0)["records"]
    assert len(records) == 5 and all(r["served_by"] == "champion" and r["mirrored"] for r in records)
    for r in records:  # both models answered every row; the champion is the float32 torch export
        assert len(r["predictions"]["champion"]) == len(r["predictions"]["challenger"]) == 3
        assert r["latency_ms"]["champion"] > 0 and r["latency_ms"]["challenger"] > 0


def test_the_split_is_seeded_and_records_are_fetched_incrementally(uri):
    served = []
    for _ in range(2):
        core = _RouterCore(uri, NAME, seed=7)
        core.configure(split_percent=30, shadow_fraction=0)
        send(core, 40, rows=1)
        served.append([r["served_by"] for r in core.records_since(0)["records"]])
    assert served[0] == served[1]  # same seed, same request sequence: same split
    assert 4 <= served[0].count("challenger") <= 20  # ~30 % of 40

    core._feedback({"request_id": "q3", "labels": [1.0]})
    first = core.records_since(0)
    assert len(first["records"]) == 40 and first["feedback"] == [{"seq": 40, "request_id": "q3", "labels": [1.0]}]
    send(core, 2, rows=1)
    later = core.records_since(first["next"])
    assert [r["seq"] for r in later["records"]] == [41, 42] and later["feedback"] == []


def test_bad_control_requests_are_refused_and_no_challenger_means_champion_only(uri):
    core = _RouterCore(uri, NAME)
    with pytest.raises(ValueError, match="split_percent"):
        core.configure(split_percent=120, shadow_fraction=0)
    MlflowClient(uri).delete_registered_model_alias(NAME, CHALLENGER)
    try:
        assert core.load()["versions"] == {"champion": 1}
        with pytest.raises(ValueError, match="no challenger"):
            core.configure(split_percent=10, shadow_fraction=0)
        assert all(b'"champion"' in r.body for r in send(core, 3))
    finally:
        MlflowClient(uri).set_registered_model_alias(NAME, CHALLENGER, 2)
