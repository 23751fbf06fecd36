"""Elastic, multi-worker jobs on a real Ray cluster: a PyTorch MLP and a scikit-learn model each run with
two workers, shrink 2 -> 1 on small slack, pause on an SLO breach, come back to 2, and still consume
every row exactly once (proved by row ids)."""

from __future__ import annotations

import time

import pytest

from runtime.spec.job import spec_from_dict
from tests.integration.test_governed_job import JobThread, assert_exactly_once, logged_decisions
from tests.support import ServingProcess
from runtime.training.datagen import write_regression_slices

pytestmark = pytest.mark.integration

MODELS = {
    "torch": {"framework": "torch", "estimator": "examples.torch_models:make_mlp",
              "params": {"in_features": 8, "hidden": 32, "lr": 0.003}},
    "sklearn": {"estimator": "sklearn.linear_model.SGDRegressor", "params": {"random_state": 0}},
}


def elastic_spec(tmp_path, kind: str, metrics_url: str, *, slices: int = 8, max_rows_per_s: float = 600):
    data, holdout = write_regression_slices(tmp_path / "data", slices=slices, rows_per_slice=2500)
    return spec_from_dict({
        "name": f"it-elastic-{kind}",
        "model": MODELS[kind],
        "data": {"path": str(data), "target": "y", "id_column": "row_id", "batch_rows": 100},
        "validation": {"holdout": str(holdout), "metric": "r2"},
        "serving": {"url": metrics_url, "slo_p99_ms": 400, "window_s": 0.5, "stale_after_s": 3},
        "budget": {"max_workers": 2, "max_rows_per_s": max_rows_per_s, "cooldown_s": 1.0, "holddown_s": 0.5, "park_s": 60},
        "checkpoint": {"storage": str(tmp_path / "ckpt"), "every_steps": 4},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "elastic"},
    })


@pytest.mark.parametrize("kind", ["torch", "sklearn"])
def test_two_workers_resize_pause_resume_exactly_once(ray_session, tmp_path, kind, capsys):
    with ServingProcess(delay_s=0.002, rps=60) as server:
        job = JobThread(elastic_spec(tmp_path, kind, server.metrics_url))
        job.start()
        # Two workers up and training (their cold start may itself cause a pause first: that is fine).
        first = job.wait_for(lambda s: s["active"] == 2 and s["rows_consumed"] > 0, timeout_s=180)
        job.wait_for(lambda s: s["active"] == 2 and s["rows_consumed"] > first["rows_consumed"] + 400, timeout_s=120)
        # p99 lands in the histogram's (300, 400] ms bucket, just under the SLO: small slack -> THROTTLE, 2 -> 1.
        # A wide bucket under the SLO leaves ~90 ms for the noise of a server sharing two cores with two
        # training workers: only a tail past 400 ms turns the throttle into a pause. On a busy CI host it
        # once did (and a pause at that p99 never resumes): then back to a fast service, and again.
        for _ in range(3):
            t_shrink = time.time()
            server.set_delay(0.31)
            hit = job.wait_for(lambda s: s["seen"] > t_shrink and (
                (s["active"] == 1 and s["level"] == "THROTTLE") or s["level"] == "PAUSE"))
            if hit["level"] == "THROTTLE":
                break
            t_again = time.time()
            server.set_delay(0.002)
            job.wait_for(lambda s: s["seen"] > t_again and s["active"] == 2, timeout_s=120)
        else:
            pytest.fail("a p99 just under the SLO paused the job in each of three tries: its tail passed 400 ms")
        t_pause = time.time()
        server.set_delay(0.45)  # over the SLO: PAUSE
        job.wait_for(lambda s: s["seen"] > t_pause and s["level"] == "PAUSE" and s["active"] == 0)
        t_back = time.time()
        server.set_delay(0.002)
        job.wait_for(lambda s: s["seen"] > t_back and s["active"] == 2, timeout_s=120)
        summary = job.finish(timeout_s=300)

    assert_exactly_once(summary)
    assert summary["pauses"] >= 1 and summary["resumes"] >= 1
    decisions = logged_decisions(summary, tmp_path)
    workers_seen = [d["active"] for d in decisions]
    assert 2 in workers_seen and 1 in workers_seen and 0 in workers_seen
    assert any(d["reason"] == "SLACK_LOW" for d in decisions)
    assert summary["validation"]["candidate"] > 0.5  # averaging two workers' models still learned the relation
    with capsys.disabled():
        print(f"\n[figures] {kind}: rows {summary['rows_consumed']}, pauses {summary['pauses']}, "
              f"checkpoints {summary['checkpoints']}, holdout r2 {summary['validation']['candidate']:.3f}")


def test_torch_champion_loads_back_by_alias_and_predicts_like_the_trained_model(ray_session, tmp_path):
    import mlflow
    import numpy as np

    from runtime.training.ingest import read_table_file, to_xy
    from runtime.driver.job import run_job
    from runtime.training.trainers import model_from_state
    from runtime.training.checkpoint import CheckpointStore

    with ServingProcess(delay_s=0.002, rps=30) as server:  # 5,000 rows at full speed: what is tested is the registry
        spec = elastic_spec(tmp_path, "torch", server.metrics_url, slices=2, max_rows_per_s=20_000)
        summary = run_job(spec)
    assert summary["registered_alias"] == "champion"
    trained = model_from_state(spec.model, CheckpointStore(spec.checkpoint.storage, spec.name).latest().payload)
    mlflow.set_tracking_uri(spec.tracking.uri)
    loaded = mlflow.pytorch.load_model(f"models:/{spec.name}@champion")
    x, _, _ = to_xy(read_table_file(spec.validation.holdout), "y", None, "row_id")
    import torch

    with torch.no_grad():
        from_registry = loaded(torch.as_tensor(x, dtype=torch.float32)).numpy().ravel()
    np.testing.assert_allclose(from_registry, trained.predict(x).ravel(), rtol=1e-5, atol=1e-6)
